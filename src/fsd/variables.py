"""Every variable the runtime reads, assembled from what each part declares: the transports
(:func:`fsd.channels.variables`), the model store (:attr:`fsd.store.StoreConfig.VARIABLES`), the
platforms (:attr:`fsd.launch.LauncherOptions.VARIABLES` and ``SECRETS``) and what they all share
(:data:`COMMON`). Nothing here is listed by hand twice: the secret files a function maps onto
variables (:data:`SECRET_VARS`, :func:`function_env`), the names whose values no message repeats
(:data:`SECRET_NAMES`) and docs/configuration.md (:mod:`fsd.configdoc`, which adds the entry
points' own declarations) follow from them.

A platform mounts each secret a deployment names as a file in its folder
(:attr:`fsd.launch.LauncherOptions.SECRETS_DIR`; the deployed platform's is
:data:`SECRETS_DIR`); :func:`function_env` maps them onto the same variables the CLI reads, so
one code path configures both (``FSD_SECRETS_DIR`` moves the folder, for tests and the local
stack, and the operator mounts its own copies there).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from fsd import channels, launch
from fsd.settings import AWS_SDK_VARIABLES, Variable, text
from fsd.store import StoreConfig

SECRETS_DIR = launch.platform(launch.deployed()).Options.SECRETS_DIR
"""Where the functions (and the operator) find their secret files unless ``FSD_SECRETS_DIR``
says: where the deployed platform (:func:`fsd.launch.deployed`) mounts them."""

COMMON = (
    Variable(
        "FSD_RUN_KEY",
        "deployment secret that authenticates frames and invocations (at least 32 "
        "characters; fsd run makes its own per run)",
        secret=True,
        secret_file="fsd-run-key",
    ),
    Variable(
        "FSD_SECRETS_DIR",
        "where the secret files are mounted (functions, the operator)",
        default=SECRETS_DIR,
    ),
)
"""What every component shares, whatever its transport or platform."""


def platform_variables(kind: str | None = None) -> tuple[Variable, ...]:
    """The variables of platform ``kind`` (every platform's when None): its options'
    ``VARIABLES`` and ``SECRETS``."""
    found: dict[str, Variable] = {}
    for each in launch.PLATFORMS if kind is None else (kind,):
        options = launch.platform(each).Options
        files = {var: name for name, var in options.SECRETS.items()}
        for name, meaning in options.VARIABLES.items():
            found.setdefault(
                name,
                Variable(name, meaning, secret=name in files, secret_file=files.get(name, "")),
            )
        for var, name in files.items():
            found.setdefault(
                var, Variable(var, f"the {name} secret", secret=True, secret_file=name)
            )
    return tuple(found.values())


def runtime_variables() -> tuple[Variable, ...]:
    """Every variable the runtime's parts declare, each once (the first declaration wins)."""
    found: dict[str, Variable] = {}
    parts: Iterable[Variable] = (
        *COMMON,
        *channels.variables(),
        *AWS_SDK_VARIABLES,
        *StoreConfig.VARIABLES,
        *platform_variables(),
    )
    for var in parts:
        found.setdefault(var.name, var)
    return tuple(found.values())


VARIABLES = runtime_variables()

SECRET_VARS: Mapping[str, str] = {v.secret_file: v.name for v in VARIABLES if v.secret_file}
"""Secret file name -> the variable it sets."""

PATH_FILES: Mapping[str, str] = {v.path_file: v.name for v in VARIABLES if v.path_file}
"""Mounted file name -> the variable that takes its path (a NATS .creds file)."""

SECRET_NAMES = frozenset(v.name for v in VARIABLES if v.secret)
"""Variables whose values no message repeats: the secret files' and the other secrets."""


def secrets_dir(env: Mapping[str, str]) -> Path:
    """Where the secret files are mounted (``FSD_SECRETS_DIR``, else :data:`SECRETS_DIR`)."""
    return Path(text(env, "FSD_SECRETS_DIR", SECRETS_DIR))


def function_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with every mounted secret filled in (secrets win over variables): what an
    entry point (a function, the operator, a Lambda handler) parses its configuration from."""
    env = dict(environ)
    folder = secrets_dir(env)
    for name, var in SECRET_VARS.items():
        path = folder / name
        if path.is_file():
            env[var] = path.read_text().strip()
    for name, var in PATH_FILES.items():
        if (folder / name).is_file():
            env[var] = str(folder / name)
    return env
