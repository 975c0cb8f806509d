"""A function's own configuration: its limits, the models it serves and its secret.

Everything that bounds or authorises a request comes from here, never from the request. A value
that is missing where it is required, or malformed, makes the function refuse every request with
``503 not configured`` (:class:`NotConfigured`): the operator's mistake, said plainly, not a 500
traceback nor a silent default.

Every variable, its default and bounds: docs/configuration.md (from :data:`VARIABLES`).

The watchdog cuts a request at ``exec_timeout`` with a bare 502/504 that is not this API's JSON,
so a function never accepts a timeout it could not keep: ``FSD_MAX_TIMEOUT`` must stay
:data:`EXEC_MARGIN` seconds under ``exec_timeout`` (the time to give up and answer). An explicit
``FSD_MAX_TIMEOUT`` (or ``FSD_TIMEOUT``) that does not is refused as ``not configured``, never
quietly lowered; an unset one is lowered to fit. A request asking more then gets a JSON 400.
Every variable is read through :mod:`fsd.settings` (the readers and the defaults it shares
with the operator, the Lambda handlers and the CLI). Numbers are plain decimals (``300``,
``0.5``): anything else, ``1e3``, NaN, infinities, hex, underscores, negatives and
``exec_timeout`` strings of-watchdog would silently replace by its default, is refused. A blank
variable is an unset one.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fsd import auth, channels, launch, settings
from fsd.channels import REMOTE_CHANNELS
from fsd.channels.base import ChannelConfig
from fsd.channels.settings import channel_config
from fsd.errors import AuthError, FsdError, InputError
from fsd.launch import Launcher, LauncherOptions
from fsd.planner import MEMORY_RANGE
from fsd.settings import EXEC_MARGIN, HOUR, Variable
from fsd.store import StoreConfig
from fsd.variables import SECRET_NAMES

MODEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
"""What a model name looks like (the request schemas use the same pattern)."""

_UNITS = r"(ns|us|\u00b5s|\u03bcs|ms|s|m|h)"  # Go's time.ParseDuration units
_GO_DURATION = re.compile(rf"(?:(?:[0-9]{{1,12}}(?:\.[0-9]{{0,9}})?|\.[0-9]{{1,9}}){_UNITS})+")
_GO_UNIT = re.compile(rf"([0-9.]+){_UNITS}")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0}
_UNIT_SECONDS |= {"m": 60.0, "h": 3600.0}

WATCHDOG_EXEC_TIMEOUT = 30.0
"""of-watchdog's ``exec_timeout`` when none is set: ``config/config.go`` ``New`` (``defaultTimeout
:= time.Second * 30``, ``ExecTimeout: getDuration(envMap, "exec_timeout", defaultTimeout)``),
applied to every request in ``executor/http_runner.go`` (``context.WithTimeout``)."""

WATCHDOG_PROCESS_VARS = ("fprocess", "function_process")
"""What of-watchdog starts the function from (``config/config.go``): set in every function it runs
(the template's Dockerfile sets ``fprocess``), never by ``fsd.localstack`` or tests."""


VARIABLES = (
    Variable(
        "FSD_MAX_WORKERS",
        "largest `workers` a request or invocation may name (1..65536)",
        default=str(settings.MAX_WORKERS),
    ),
    Variable(
        "FSD_MAX_IMAGES",
        "most images one inference may carry (1..10000000)",
        default=str(settings.FUNCTION_MAX_IMAGES),
    ),
    Variable(
        "FSD_TIMEOUT",
        "coordinator: seconds for a request without `timeout` (lowered to FSD_MAX_TIMEOUT "
        "when that is shorter)",
        default=f"{settings.TIMEOUT:g}",
    ),
    Variable(
        "FSD_MAX_TIMEOUT",
        "longest `timeout` (coordinator) or `layer_timeout` (worker) accepted; must stay "
        f"{EXEC_MARGIN:g} s under exec_timeout (an unset one is lowered to fit)",
        default=f"{settings.MAX_TIMEOUT:g}",
    ),
    Variable(
        "exec_timeout",
        "of-watchdog's own limit on a request: whole seconds or a Go duration (`310s`, `5m`); "
        "0: none; unset: 30 s under the watchdog, none outside it",
        default=f"{WATCHDOG_EXEC_TIMEOUT:g}s",
    ),
    Variable(
        "FSD_LAYER_TIMEOUT",
        "coordinator: seconds a worker waits for one layer",
        default=f"{settings.LAYER_TIMEOUT:g}",
    ),
    Variable(
        "FSD_FANOUT",
        "coordinator: invoke workers as a tree above this many; worker: the largest `fanout` "
        f"an invocation may carry (0..{settings.MAX_FANOUT})",
        default=str(settings.FANOUT),
    ),
    Variable(
        "FSD_SHARD_CACHE", "worker: shards kept warm (1..1024)", default=str(settings.SHARD_CACHE)
    ),
    Variable(
        "FSD_MEMORY_MB",
        "coordinator: memory of one worker invocation (MB); set, the planner makes replicas of "
        "the fewest stored partitions that fit; unset, every worker is one partition",
    ),
    Variable(
        "FSD_MODELS",
        "models served: comma-separated names and prefixes ending in `*` (`*` alone: every "
        "model); unset or empty: none",
    ),
    Variable(
        "FSD_CHANNEL", "the transport of a request that names none", default=channels.DEPLOYED
    ),
    Variable(
        "FSD_CHANNELS",
        "the transports this deployment runs (comma-separated), the only ones a request or an "
        "invocation may name; unset: FSD_CHANNEL alone",
    ),
    Variable(
        "FSD_LAUNCHER",
        "the platform that invokes workers: a name of fsd.launch.PLATFORMS whose workers are "
        "functions (an entry point of its own may set it)",
        default=launch.deployed(),
    ),
    *(
        Variable(name, "set by of-watchdog to start the function: the watchdog is in front")
        for name in WATCHDOG_PROCESS_VARS
    ),
)
"""What a function reads besides its transport's, its store's and its platform's variables."""


_STORE_ADDRESS = StoreConfig.VARIABLES[0].name
"""The variable that names the model store's server (declared first, as a transport's address)."""


class NotConfigured(FsdError):
    """This function's own configuration is missing or malformed (HTTP 503)."""


def _integer(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return settings.integer(env, name, default, low=low, high=high, error=NotConfigured)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return settings.seconds(env, name, default, high=HOUR, error=NotConfigured)


def under_watchdog(env: Mapping[str, str]) -> bool:
    """Whether this process runs behind of-watchdog (which set ``fprocess`` to start it)."""
    return any(settings.text(env, name) for name in WATCHDOG_PROCESS_VARS)


def exec_timeout(env: Mapping[str, str]) -> float | None:
    """of-watchdog's ``exec_timeout`` in seconds (None: no limit).

    What of-watchdog accepts (``config/config.go``, ``parseIntOrDurationValue``): whole seconds
    or a Go duration (``time.ParseDuration``: ``310s``, ``5m``, ``1m30s``); ``0`` is no limit.
    Unset (or empty) is the watchdog's default of 30 s when this runs under it
    (:data:`WATCHDOG_EXEC_TIMEOUT`), and no limit when nothing stands in front (a local stack,
    tests). Where the watchdog falls back to its default on anything else, this refuses it.
    """
    raw = settings.text(env, "exec_timeout")
    if not raw:
        return WATCHDOG_EXEC_TIMEOUT if under_watchdog(env) else None
    if re.fullmatch(r"[0-9]{1,9}", raw):
        seconds = float(raw)
    elif _GO_DURATION.fullmatch(raw):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_UNIT.findall(raw))
    else:
        raise NotConfigured(
            f"exec_timeout must be whole seconds or a Go duration like 310s or 5m, got {raw[:40]!r}"
        )
    if not math.isfinite(seconds):
        raise NotConfigured(f"exec_timeout is out of range, got {raw[:40]!r}")
    return seconds or None


@dataclass(frozen=True)
class Limits:
    """The bounds a function puts on every request (see :data:`VARIABLES`)."""

    max_workers: int = settings.MAX_WORKERS
    max_images: int = settings.FUNCTION_MAX_IMAGES
    timeout: float = settings.TIMEOUT
    max_timeout: float = settings.MAX_TIMEOUT
    layer_timeout: float = settings.LAYER_TIMEOUT
    fanout: int = settings.FANOUT
    shard_cache: int = settings.SHARD_CACHE

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Limits:
        watchdog = exec_timeout(env)
        ceiling = HOUR if watchdog is None else watchdog - EXEC_MARGIN
        if ceiling <= 0:
            raise NotConfigured(
                f"exec_timeout ({watchdog:g} s) leaves no time for a request: give it more "
                f"than {EXEC_MARGIN:g} s"
            )
        max_timeout = _seconds(env, "FSD_MAX_TIMEOUT", min(cls.max_timeout, ceiling))
        if max_timeout > ceiling:
            raise NotConfigured(
                f"FSD_MAX_TIMEOUT ({max_timeout:g} s) must stay {EXEC_MARGIN:g} s under the "
                f"watchdog's exec_timeout ({watchdog:g} s), which would cut longer requests"
            )
        limits = cls(
            max_workers=_integer(env, "FSD_MAX_WORKERS", cls.max_workers, 1, 65536),
            max_images=_integer(env, "FSD_MAX_IMAGES", cls.max_images, 1, 10_000_000),
            timeout=_seconds(env, "FSD_TIMEOUT", min(cls.timeout, max_timeout)),
            max_timeout=max_timeout,
            layer_timeout=_seconds(env, "FSD_LAYER_TIMEOUT", cls.layer_timeout),
            fanout=_integer(env, "FSD_FANOUT", cls.fanout, 0, settings.MAX_FANOUT),
            shard_cache=_integer(env, "FSD_SHARD_CACHE", cls.shard_cache, 1, 1024),
        )
        if limits.timeout > limits.max_timeout:
            raise NotConfigured(
                f"FSD_TIMEOUT ({limits.timeout:g} s) exceeds FSD_MAX_TIMEOUT "
                f"({limits.max_timeout:g} s)"
            )
        return limits


@dataclass(frozen=True)
class ModelFilter:
    """The models a function serves (``FSD_MODELS``); everything else is an unknown model."""

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelFilter:
        names: set[str] = set()
        prefixes: list[str] = []
        for item in settings.names(env, "FSD_MODELS"):
            if item.endswith("*") and (item == "*" or MODEL_NAME.fullmatch(item[:-1])):
                prefixes.append(item[:-1])
            elif MODEL_NAME.fullmatch(item):
                names.add(item)
            else:
                raise NotConfigured(
                    f"FSD_MODELS: {item[:70]!r} is neither a model name nor a prefix ending in *"
                )
        return cls(frozenset(names), tuple(prefixes))

    @property
    def only(self) -> str | None:
        """The model when exactly one is served (a request may then leave ``model`` out)."""
        return next(iter(self.names)) if len(self.names) == 1 and not self.prefixes else None

    def allows(self, name: str) -> bool:
        return name in self.names or any(name.startswith(p) for p in self.prefixes)


def memory_budget(env: Mapping[str, str]) -> float | None:
    """``FSD_MEMORY_MB``, the memory of one worker invocation (the operator sets it), or None
    when unset. Read with the other settings, before the store is asked anything: a budget no
    worker could run in (outside :data:`fsd.planner.MEMORY_RANGE`, the one range of a budget)
    is the operator's mistake, refused as ``not configured`` for every request, not a 400."""
    budget = settings.number(env, "FSD_MEMORY_MB", 0.0, error=NotConfigured, **MEMORY_RANGE)
    return budget or None


def deployment_secret(env: Mapping[str, str]) -> bytes:
    """The secret invocations are signed with; NotConfigured (never showing it) if unusable."""
    try:
        return auth.load_secret(settings.run_key(env))
    except AuthError as exc:
        raise NotConfigured(f"{exc} (mount the fsd-run-key secret)") from None


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Every secret this function holds, to scrub from anything it answers."""
    found = [settings.text(env, var) for var in sorted(SECRET_NAMES)]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


@dataclass(frozen=True)
class Platform:
    """How this function invokes workers (``FSD_LAUNCHER``) and that platform's own options,
    read once from this function's environment (:meth:`fsd.launch.LauncherOptions.from_env`)."""

    kind: str
    options: LauncherOptions

    def launcher(self, *, secret: bytes, timeout: float, fanout: int = 0) -> Launcher:
        return launch.make_launcher(
            self.kind, self.options, secret=secret, timeout=timeout, fanout=fanout
        )


def platform(env: Mapping[str, str]) -> Platform:
    """This function's :class:`Platform`; NotConfigured for a name not in the registry or one
    whose workers are local processes (a function's workers are other functions)."""
    kind = settings.text(env, "FSD_LAUNCHER", launch.deployed()).lower()
    if kind not in launch.PLATFORMS or launch.platform(kind).LOCAL:
        usable = [k for k in launch.PLATFORMS if not launch.platform(k).LOCAL]
        settings.choice(env, "FSD_LAUNCHER", launch.deployed(), usable, error=NotConfigured)
    cls = launch.platform(kind)
    try:
        return Platform(kind, cls.Options.from_env(env))
    except InputError as exc:
        raise NotConfigured(str(exc)) from None


@dataclass(frozen=True)
class Transports:
    """The transports this deployment runs (``FSD_CHANNELS``) and its default (``FSD_CHANNEL``).

    The one rule for what a caller may choose: a request (coordinator) or a signed invocation
    (worker) names a transport only among these, checked before any side effect; anything else
    is a 400 naming what the deployment runs, so a caller can never make a function dial a
    service its operator did not configure (nor hand it credentials meant for another one).
    Unset, the deployment runs its default transport alone.
    """

    offered: tuple[str, ...] = (channels.DEPLOYED,)
    default: str = channels.DEPLOYED

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Transports:
        default = settings.choice(
            env, "FSD_CHANNEL", channels.DEPLOYED, REMOTE_CHANNELS, error=NotConfigured
        )
        offered = tuple(dict.fromkeys(n.lower() for n in settings.names(env, "FSD_CHANNELS")))
        unknown = [n for n in offered if n not in REMOTE_CHANNELS]
        if unknown:
            raise NotConfigured(
                f"FSD_CHANNELS: {unknown[0][:20]!r} is not a transport "
                f"({', '.join(REMOTE_CHANNELS)})"
            )
        if offered and default not in offered:
            raise NotConfigured(
                f"FSD_CHANNEL {default!r} is not among FSD_CHANNELS ({', '.join(offered)})"
            )
        return cls(offered or (default,), default)

    def choose(self, requested: str | None, field: str = "channel") -> str:
        """The transport a caller asked for (the default when none): InputError (400) when this
        deployment does not run it."""
        kind = requested or self.default
        if kind not in self.offered:
            raise InputError(
                f"{field}: {str(kind)[:20]!r} is not a transport this deployment runs "
                f"(FSD_CHANNELS: {', '.join(self.offered)})"
            )
        return kind


def own_channels(kind: str, env: Mapping[str, str]) -> tuple[ChannelConfig, StoreConfig]:
    """This function's transport for ``kind`` and its model store, from its own configuration
    only; a malformed or missing setting is this function's fault (NotConfigured), never the
    request's. Callers choose ``kind`` through :class:`Transports` first."""
    if kind not in REMOTE_CHANNELS:
        raise NotConfigured(f"FSD_CHANNEL must be one of {', '.join(REMOTE_CHANNELS)}")
    try:
        # no reaping from a function: its role lists no queues (it ends its runs itself)
        transport = dataclasses.replace(channel_config(kind, env=env), reap=False)
        store = StoreConfig.from_env(env)
    except InputError as exc:
        raise NotConfigured(str(exc)) from None
    if not channels.configured(transport):  # a function never starts a server of its own
        raise NotConfigured(f"no {kind} server configured ({channels.transport(kind).SERVER})")
    if not store.endpoint:
        raise NotConfigured(f"no model store configured ({_STORE_ADDRESS})")
    return transport, store
