"""docs/configuration.md, generated: every variable fsd reads, from what each part declares.

Each part declares its variables next to the code that reads them (:class:`fsd.settings.Variable`):
a transport's options, the model store, a platform's options, the functions
(:data:`fsd.functions.config.VARIABLES`), the Lambda handlers (:data:`fsd.aws.settings.VARIABLES`),
the operator (:data:`fsd.k8s.config.VARIABLES` and each operator platform's ``VARIABLES``) and the
CLI (:data:`fsd.cli.VARIABLES`). :func:`components` gathers them, :func:`markdown` renders one
table per component, and ``python -m fsd.configdoc > docs/configuration.md`` writes the page (a
test keeps it current). This module sits above every entry point it reads declarations from, so
it is one itself: nothing imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fsd import channels, invoke, launch
from fsd.settings import AWS_SDK_VARIABLES, Variable
from fsd.store import StoreConfig
from fsd.variables import COMMON, platform_variables

COMMAND = "python -m fsd.configdoc > docs/configuration.md"
"""How docs/configuration.md is made (the page and the staleness test say so)."""

FUNCTION_SERVER = (
    Variable("FSD_HANDLER_DIR", "folder holding handler.py (or --handler)", default="function"),
    Variable("FSD_PORT", "TCP port (or --port); the image sets it for the watchdog in front"),
    Variable("PORT", "TCP port when FSD_PORT is unset (as some platforms set it)", default="5000"),
    Variable("FSD_BIND", "address to listen on, a literal IP (or --bind)", default="127.0.0.1"),
    Variable("FSD_MAX_BODY_BYTES", "largest request body (413 above)", default="16777216"),
    Variable(
        "FSD_THREADS",
        "requests served at once (the operator sets max_inflight + 2)",
        default="max_inflight + 2, else 8",
    ),
    Variable("max_inflight", "of-watchdog's concurrency limit (0: none)", default="0"),
    Variable("FSD_CONNECTION_LIMIT", "open connections before new ones wait", default="1000"),
    Variable("FSD_CHANNEL_TIMEOUT", "seconds of silence before a connection closes", default="30"),
    Variable(
        "FSD_REQUEST_READ_SECONDS", "seconds to receive one request, head and body", default="60"
    ),
    Variable("FSD_LOG_LEVEL", "log level", default="INFO"),
    Variable("HOSTNAME", "the host name its metrics and logs show (else the system's)"),
    Variable(
        "FSD_SHUTDOWN_DELAY_SECONDS",
        "seconds it keeps serving after SIGTERM (the operator sets the probe interval + 2)",
        default="0",
    ),
    Variable(
        "FSD_DRAIN_SECONDS", "seconds it then waits for requests in flight to finish", default="30"
    ),
)
"""The function image's HTTP server (template/fsd-python3-http/index.py): it runs on its own,
without fsd installed in its process's path, so its variables are declared here; a test keeps
this list equal to what index.py reads."""


@dataclass(frozen=True)
class Component:
    """One table of the page: a part of fsd and the variables it reads."""

    title: str
    about: str  # one line: who reads them, where
    variables: tuple[Variable, ...]
    short: str  # its name in the "read by" column


def _transports() -> list[Component]:
    found = []
    for kind in channels.TRANSPORTS:
        cls = channels.transport(kind)
        if not cls.OPTIONS.VARIABLES:
            continue
        reader = f"{cls.OPTIONS.__module__}.{cls.OPTIONS.__qualname__}"
        found.append(
            Component(
                f"Transport `{kind}`",
                f"Read by `{reader}` wherever the `{kind}` transport is used: `fsd run`, the "
                "functions, every platform's entry (the operator sets them for its functions).",
                cls.OPTIONS.VARIABLES,
                f"transport {kind}",
            )
        )
    return found


def _platforms() -> list[Component]:
    found = []
    for kind in launch.PLATFORMS:
        cls = launch.platform(kind)
        variables = platform_variables(kind)
        if not variables:
            continue
        reader = f"{cls.Options.__module__}.{cls.Options.__qualname__}"
        found.append(
            Component(
                f"Platform `{kind}`",
                f"Read by `{reader}` in a function that invokes workers on {kind} (a "
                "coordinator, a worker's fan-out); the operator sets them.",
                variables,
                f"platform {kind}",
            )
        )
    return found


ENTRY_POINTS = ("fsd.aws.settings",)
"""A platform's own entry points besides the functions, each declaring its table: ``TITLE``,
``ABOUT``, ``SHORT`` and ``VARIABLES`` (read besides the functions')."""


def _entry_points() -> list[Component]:
    found = []
    for name in ENTRY_POINTS:
        module = importlib.import_module(name)
        found.append(Component(module.TITLE, module.ABOUT, module.VARIABLES, module.SHORT))
    return found


def _function_platforms() -> list[str]:
    """The platforms whose workers are functions, by name."""
    return [k for k in launch.PLATFORMS if not launch.platform(k).LOCAL]


def _operator() -> tuple[Variable, ...]:
    from fsd.k8s import config, platforms  # noqa: PLC0415 (the operator's extra)

    own = list(config.VARIABLES)
    for name in platforms.PLATFORMS:
        own.extend(getattr(platforms.get(name), "VARIABLES", ()))
    return tuple(own)


def components() -> tuple[Component, ...]:
    """Every component's declared variables, in the page's order."""
    from fsd import cli  # noqa: PLC0415 (entry points: read for their declarations only)
    from fsd.functions import config as function_config  # noqa: PLC0415

    return (
        Component(
            "Every component",
            "Read by `fsd run`, the functions, every platform's entry and the operator alike.",
            COMMON,
            "all",
        ),
        *_transports(),
        Component(
            "AWS SDK settings",
            "Read as the AWS SDKs read them (`fsd.settings`), by the model store and the "
            "transports that speak AWS's APIs.",
            AWS_SDK_VARIABLES,
            "AWS",
        ),
        Component(
            "Model store",
            "Read by `fsd.store.StoreConfig`: `fsd model`, the functions, the operator.",
            StoreConfig.VARIABLES,
            "store",
        ),
        *_platforms(),
        Component(
            "Functions",
            "Read by `fsd.functions.config` in the coordinator and worker functions "
            f"({', '.join(_function_platforms())}): a bad value answers every request "
            "`503 not configured`.",
            function_config.VARIABLES,
            "functions",
        ),
        *_entry_points(),
        Component(
            "Operator",
            "Read by `fsd.k8s.config.OperatorConfig` and each platform's operator settings "
            "(`fsd.k8s.platforms`): a bad value stops the operator at start-up.",
            _operator(),
            "operator",
        ),
        Component(
            "Command line",
            "Read by `fsd` (`fsd.cli`, `fsd.invoke`); flags win over variables.",
            (*cli.VARIABLES, *invoke.variables()),
            "CLI",
        ),
        Component(
            "Function server",
            "Read by the function image's HTTP server (`template/fsd-python3-http/index.py`).",
            FUNCTION_SERVER,
            "server",
        ),
    )


def declared(parts: Iterable[Component] | None = None) -> frozenset[str]:
    """Every variable name any component declares."""
    return frozenset(
        v.name for c in (components() if parts is None else parts) for v in c.variables
    )


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _secret(var: Variable) -> str:
    if var.secret_file:
        return f"yes (file `{var.secret_file}`)"
    if var.path_file:
        return f"its path: file `{var.path_file}`"
    return "yes" if var.secret else ""


def markdown(parts: Sequence[Component] | None = None) -> str:
    """The page: one table per component; "read by" names every component declaring a row's
    variable."""
    parts = components() if parts is None else parts
    readers: dict[str, list[str]] = {}
    for part in parts:
        for var in part.variables:
            readers.setdefault(var.name, []).append(part.short)
    lines = [
        "# Configuration",
        "",
        "Every environment variable fsd reads, by component. Generated from the declarations "
        f"next to the code that reads them: run `{COMMAND}` after changing one "
        "(tests/structure/test_config_once.py fails while this page is stale). Numbers are "
        "plain decimals (`300`, `0.5`); a blank variable is an unset one; a secret's value is "
        "never shown in a message. Secret files are mounted in `FSD_SECRETS_DIR` (functions, "
        "operator), or held where a platform's own entry says (its table below).",
    ]
    for part in parts:
        lines += [
            "",
            f"## {part.title}",
            "",
            part.about,
            "",
            "| Variable | Meaning | Default | Secret | Read by |",
            "|---|---|---|---|---|",
        ]
        for var in part.variables:
            meaning = var.meaning + (f" (flag `{var.flag}` wins)" if var.flag else "")
            default = f"`{var.default}`" if var.default else ""
            lines.append(
                f"| `{var.name}` | {_cell(meaning)} | {_cell(default)} | {_secret(var)} "
                f"| {', '.join(dict.fromkeys(readers[var.name]))} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print docs/configuration.md.")
    parser.add_argument("--markdown", action="store_true", help="markdown (the only format)")
    parser.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
