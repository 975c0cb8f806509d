"""One settings layer: the readers every component parses its environment with, and the defaults
they share.

The CLI, the OpenFaaS functions (:mod:`fsd.functions.config`), the Lambda handlers
(:mod:`fsd.aws.settings`) and the operator (:mod:`fsd.k8s.config`) each read variables here, so a
number is parsed by one grammar, checked by one set of bounds, and refused with one style of
message, and a default shared by two components is one constant below, not two literals that
drift. Each component passes its own error class: a function's bad setting is its operator's
mistake (``NotConfigured``, HTTP 503), the operator's or the CLI's an :class:`InputError`.

Numbers are plain decimals only (``300``, ``0.5``): no exponent (``1e3``), no ``nan``/``inf``, no
hex, no underscores, no sign unless the bounds allow negatives. Python's ``float()`` and ``int()``
accept all of those, and a setting that reads ``1e300`` or ``nan`` is a mistake to refuse, not a
value to clamp. An unset or blank variable takes the default. A message names the variable and
shows what it held, except for a secret's (:func:`looks_secret`), which is never repeated.

Why not pydantic-settings: it would bring pydantic and pydantic-core (a compiled wheel of a few
MB) into every function image, the Lambda image and the operator, for about a hundred lines of
readers; its number parsing accepts ``1e3``, ``inf`` and ``nan`` unless each field is constrained
by hand, and its messages echo the raw input, secrets included. The runtime dependencies stay
small and the rules stay here, in one page.

Which variable means what, its default and whether it is a secret is declared next to the code
that reads it (:class:`Variable`), assembled in :mod:`fsd.variables` and listed in
docs/configuration.md.

Only the entry points (:mod:`fsd.cli`, the functions, the Lambda handlers, the operator, the
local stack) hand an environment to these readers: everything below them takes the typed objects
they build (tests/structure/test_config_once.py keeps it so).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fsd.errors import InputError


@dataclass(frozen=True)
class Variable:
    """One environment variable a component reads, declared next to the code that reads it.

    Declarations are data, so what follows from them is assembled, never listed by hand: the
    CLI's flags (``flag``), the secret files a function maps onto variables (``secret_file``,
    :mod:`fsd.variables`), the names no message repeats (``secret``) and docs/configuration.md.
    """

    name: str
    meaning: str
    default: str = ""  # as shown in the docs ("" : none)
    flag: str = ""  # the CLI flag that wins over the variable (``--nats-url``)
    flag_help: str = ""  # that flag's help (argparse)
    secret: bool = False  # its value is never shown
    secret_file: str = ""  # the mounted secret file whose content sets it (``fsd-nats-token``)
    path_file: str = ""  # a mounted file whose *path* sets it (a NATS .creds file)

    @property
    def dest(self) -> str:
        """The flag's argparse destination: ``--nats-url`` -> ``nats_url``."""
        return self.flag.lstrip("-").replace("-", "_")


# --- the defaults shared by the CLI, the functions, the Lambda handlers and the operator ---
# (a backend's own defaults are its module's: a platform's, a transport's, the store's)

BUCKET = "fsd"
"""The S3 bucket for activations and models (``FSD_S3_BUCKET``)."""

REGION = "us-east-1"
"""The AWS region when neither ``AWS_REGION`` nor ``AWS_DEFAULT_REGION`` names one."""

PREFIX = "fsd"
"""The sqs/sns deployment's prefix for queue and topic names (``FSD_AWS_PREFIX``)."""

FANOUT = 16
"""A coordinator invokes workers as a tree above this many, and a worker accepts no larger
fan-out (``FSD_FANOUT``): one value for the functions, stack.yml and the operator."""
MAX_FANOUT = 1024

MAX_WORKERS = 1024
"""Largest ``workers`` a function accepts (``FSD_MAX_WORKERS``)."""

FUNCTION_MAX_IMAGES = 100_000
"""Most images one inference through a function may carry (``FSD_MAX_IMAGES``'s default)."""

TIMEOUT = 120.0
"""Seconds of a request that names no ``timeout`` (``FSD_TIMEOUT``), in both functions."""

MAX_TIMEOUT = 300.0
"""The longest ``timeout`` a function accepts unless told (``FSD_MAX_TIMEOUT``), and so how long
``fsd invoke`` waits for an answer to a request that names none."""

LAYER_TIMEOUT = 60.0
"""Seconds a worker waits for one layer's messages (``FSD_LAYER_TIMEOUT``, a task's default)."""

RUN_TIMEOUT = 600.0
"""Seconds for a whole local inference (``fsd run --timeout``)."""

SHARD_CACHE = 4
"""Shards a worker function keeps warm (``FSD_SHARD_CACHE``)."""

MAX_INFLIGHT = 4
"""Invocations one worker replica serves at once (the operator's ``FSD_MAX_INFLIGHT``)."""

HOUR = 3600.0
"""The longest timeout a function accepts in any setting."""

EXEC_MARGIN = 5.0
"""Seconds a function keeps between its longest timeout (``FSD_MAX_TIMEOUT``) and of-watchdog's
``exec_timeout``: the time to give up and answer. One value for the functions, which refuse less
(:mod:`fsd.functions.config`), and the operator, which sets both (:mod:`fsd.k8s.desired`)."""

# --- the readers ---

_DIGITS = 15  # more than any bound below needs; a longer number is refused, not rounded
_WHOLE = re.compile(rf"[0-9]{{1,{_DIGITS}}}")
_DECIMAL = re.compile(rf"[0-9]{{1,{_DIGITS}}}(?:\.[0-9]{{1,9}})?")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


_HIDDEN = "a value not shown (a secret)"
_SECRET_WORDS = re.compile(r"(?:KEY|TOKEN|PASSWORD|SECRET|USER|CREDS)(?:_|$)")


def looks_secret(name: str) -> bool:
    """Whether a variable's value may be a secret, by its name (``FSD_RUN_KEY``,
    ``FSD_NATS_USER``, ``AWS_SESSION_TOKEN``...): the readers here never repeat such a value.
    Every secret a part declares (:data:`fsd.variables.SECRET_NAMES`) must match; a test
    keeps it so."""
    return bool(_SECRET_WORDS.search(name))


def _shown(name: str, raw: str) -> str:
    """What a message may say ``name`` held: never a secret's value, at most 40 characters."""
    return _HIDDEN if looks_secret(name) else repr(raw[:40])


def text(env: Mapping[str, str], name: str, default: str = "", *, keep_empty: bool = False) -> str:
    """``env[name]`` without surrounding blanks; ``default`` when unset or blank (with
    ``keep_empty``, only when unset: a blank value then means "off")."""
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip()
    return value if value or keep_empty else default


def decimal(
    raw: str,
    what: str,
    *,
    low: float,
    high: float,
    whole: bool = False,
    low_open: bool = False,
    error: type[Exception] = InputError,
    secret: bool = False,
) -> float:
    """``raw`` as a plain decimal within ``low..high`` (``(low, high]`` with ``low_open``), or
    ``error`` naming ``what``: the one grammar of every number setting."""
    value = raw.strip()
    negative = low < 0 and value.startswith("-")
    digits = value[1:] if negative else value
    grammar = _WHOLE if whole else _DECIMAL
    got = _HIDDEN if secret else repr(raw[:40])
    kind = "a whole number" if whole else "a number"
    bounds = f"({low:.15g}, {high:.15g}]" if low_open else f"{low:.15g}..{high:.15g}"
    if not grammar.fullmatch(digits):
        raise error(f"{what} must be {kind} in {bounds} (plain decimal digits), got {got}")
    number = float(digits) * (-1 if negative else 1)
    inside = (low < number if low_open else low <= number) and number <= high
    if not (math.isfinite(number) and inside):
        raise error(f"{what} must be {kind} in {bounds}, got {got}")
    return number


def number(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    low: float,
    high: float,
    whole: bool = False,
    low_open: bool = False,
    error: type[Exception] = InputError,
) -> float:
    """``env[name]`` as a finite plain decimal in ``low..high``; ``default`` when unset or blank."""
    raw = text(env, name)
    if not raw:
        return float(default)
    return decimal(
        raw,
        name,
        low=low,
        high=high,
        whole=whole,
        low_open=low_open,
        error=error,
        secret=looks_secret(name),
    )


def integer(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    low: int,
    high: int,
    error: type[Exception] = InputError,
) -> int:
    """``env[name]`` as a whole number in ``low..high``; ``default`` when unset or blank."""
    return int(number(env, name, default, low=low, high=high, whole=True, error=error))


def seconds(
    env: Mapping[str, str],
    name: str,
    default: float,
    *,
    high: float = HOUR,
    zero: bool = False,
    error: type[Exception] = InputError,
) -> float:
    """``env[name]`` as seconds in ``(0, high]`` (``0..high`` when ``zero`` means something:
    "never", "no delay"); ``default`` when unset or blank."""
    return number(env, name, default, low=0.0, high=high, low_open=not zero, error=error)


def names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """``env[name]`` as a comma-separated list, blanks around items and empty items dropped."""
    return tuple(part.strip() for part in text(env, name).split(",") if part.strip())


def choice(
    env: Mapping[str, str],
    name: str,
    default: str,
    choices: Iterable[str],
    *,
    error: type[Exception] = InputError,
) -> str:
    """``env[name]``, case-insensitive, one of ``choices``; ``default`` when unset or blank."""
    allowed = tuple(choices)
    value = text(env, name, default).lower()
    if value not in allowed:
        raise error(f"{name} must be one of {', '.join(allowed)}, got {_shown(name, value)}")
    return value


def flag(
    env: Mapping[str, str],
    name: str,
    default: bool = False,
    *,
    error: type[Exception] = InputError,
) -> bool:
    """``env[name]`` as yes or no: true/false, 1/0, yes/no, on/off (any case)."""
    value = text(env, name).lower()
    if not value:
        return default
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise error(f"{name} must be true or false, got {_shown(name, value)}")


AWS_SDK_VARIABLES = (
    Variable("AWS_DEFAULT_REGION", "the region when AWS_REGION is unset (as the AWS SDKs read it)"),
    Variable(
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
        "true: ignore the AWS_ENDPOINT_URL* variables, as the AWS SDKs do",
    ),
)
"""The AWS SDKs' own variables that :func:`aws_region` and :func:`aws_endpoints_ignored` read."""


def aws_region(env: Mapping[str, str], default: str = REGION) -> str:
    """The region as the AWS SDKs read it: ``AWS_REGION``, then ``AWS_DEFAULT_REGION``."""
    return text(env, "AWS_REGION") or text(env, "AWS_DEFAULT_REGION") or default


def aws_endpoints_ignored(env: Mapping[str, str]) -> bool:
    """``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``: only ``true`` (any case) is true, as in the SDKs
    (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html)."""
    return text(env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").lower() == "true"


def run_key(env: Mapping[str, str]) -> str:
    """``FSD_RUN_KEY`` as given, "" when unset: the one place it is read (every component
    checks it with :func:`fsd.auth.load_secret`)."""
    return env.get("FSD_RUN_KEY", "")
