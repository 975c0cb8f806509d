"""What every platform's functions share, as pure data: labels, environment, scale, memory.

A platform's own module (:data:`fsd.k8s.platforms.PLATFORMS`) shapes the two functions its way
and takes from here what is the same everywhere, because the image is: its environment
(:func:`function_environment`), the labels that say whose a function is, the worker's replicas
(:func:`worker_scale`) and the memory one worker invocation may use (:func:`worker_budget_mb`).

The environment mirrors stack.yml's (timeouts chained worker < coordinator < the platform's
front door, see docs/deploy-openfaas.md): of-watchdog in the image cuts a request at
``exec_timeout`` with a non-JSON answer, so ``FSD_MAX_TIMEOUT`` (the longest
``timeout``/``layer_timeout`` a request may ask) is ``exec_timeout`` less
:data:`fsd.settings.EXEC_MARGIN`, the one margin the functions check
(:mod:`fsd.functions.config`), and both functions get one ``FSD_TIMEOUT`` default.

Threads: the worker's of-watchdog admits ``max_inflight`` invocations at once and every worker of
one inference must run at the same time (they exchange layers), so index.py serves them with
``FSD_THREADS`` = ``max_inflight`` + 2 threads (two more for health checks and metrics scrapes);
fewer would queue admitted workers behind running ones until the layer timeout.

Shutdown: of-watchdog stops accepting ``healthcheck_interval`` after SIGTERM (of-watchdog
``pkg/watchdog.go``, ``listenUntilShutdown``); index.py closes its listener
``FSD_SHUTDOWN_DELAY_SECONDS`` after it, 2 s later, so a request the watchdog admitted at the
last moment still finds it open.
"""

from __future__ import annotations

import math

from fsd.k8s.config import OperatorConfig
from fsd.k8s.errors import SourceError
from fsd.k8s.spec import ModelSpec, memory_mib
from fsd.planner import BASE_MB
from fsd.settings import EXEC_MARGIN, TIMEOUT

OWNER_LABEL = "fsd.dev/owner-uid"
MANAGED_BY = "app.kubernetes.io/managed-by"
OPERATOR = "fsd-operator"
MODEL_LABEL = "fsd.dev/model"
NAMESPACE_LABEL = "fsd.dev/namespace"
ROLE_LABEL = "fsd.dev/role"
COORDINATOR_MAX = 8  # stack.yml's coordinator scale.max

# stack.yml: per-function timeouts (Go durations) and drain times, one chain from the client;
# FSD_MAX_TIMEOUT is at most exec_timeout - EXEC_MARGIN, so the function answers (JSON) before
# its watchdog cuts it, and the coordinator's is no longer than its workers' (they run the whole
# inference for it: a longer deadline would let a worker's watchdog cut the run first)
EXEC_SECONDS = {"coordinator": 310, "worker": 300}
DEFAULT_TIMEOUT = int(TIMEOUT)  # FSD_TIMEOUT: the functions' own default, set in both
_DRAIN = {"coordinator": "315", "worker": "305"}
HEALTHCHECK_SECONDS = 5  # of-watchdog's healthcheck_interval
SHUTDOWN_AFTER = 2  # seconds index.py keeps its listener open after the watchdog stops accepting
EXTRA_THREADS = 2  # index.py threads beyond max_inflight: health checks and metrics scrapes
#: the most FSD_THREADS index.py accepts (template/fsd-python3-http/index.py, Settings.from_env)
MAX_THREADS = 256


def max_timeout(role: str) -> int:
    """``FSD_MAX_TIMEOUT`` of ``role``: its ``exec_timeout`` less the functions' margin, and for
    the coordinator no more than the workers' (see above)."""
    own = int(EXEC_SECONDS[role] - EXEC_MARGIN)
    return own if role == "worker" else min(own, max_timeout("worker"))


def _timeouts(role: str) -> dict[str, str]:
    exec_seconds = EXEC_SECONDS[role]
    return {
        "exec_timeout": f"{exec_seconds}s",
        "read_timeout": f"{exec_seconds + 5}s",
        "write_timeout": f"{exec_seconds + 5}s",
        "FSD_TIMEOUT": str(min(DEFAULT_TIMEOUT, max_timeout(role))),
        "FSD_MAX_TIMEOUT": str(max_timeout(role)),
    }


def worker_scale(spec: ModelSpec, max_inflight: int, cap: int | None = None) -> tuple[int, int]:
    """(min, max) replicas of the worker function.

    A replica accepts ``max_inflight`` invocations before answering 429, so ``W`` workers want
    ``ceil(W / max_inflight)`` replicas up front (docs/deploy-openfaas.md, "Replicas"), within
    ``spec.scaling`` and the edition's ``cap``; ``scaling.min: 0`` (scale to zero) wakes up to
    one replica.
    """
    if spec.scale_min == 0:
        low, high = 1, spec.scale_max
    else:
        wanted = max(spec.scale_min, math.ceil(spec.workers / max_inflight))
        low = min(wanted, spec.scale_max)
        high = max(spec.scale_max, low)
    return (low, high) if cap is None else (min(low, cap), min(high, cap))


def coordinator_scale(spec: ModelSpec, cap: int | None = None) -> tuple[int, int]:
    """(min, max) replicas of the coordinator: one (scaled to zero when idle, if asked), up to 8."""
    return 1, COORDINATOR_MAX if cap is None else min(COORDINATOR_MAX, cap)


def function_environment(
    role: str,
    spec: ModelSpec,
    config: OperatorConfig,
    store_model: str,
    *,
    launcher: dict[str, str],
    inflight: int,
    cap: int | None = None,
) -> dict[str, str]:
    """The environment of ``role``: the platform's ``launcher`` variables (how it invokes the
    worker function: :meth:`fsd.launch.LauncherOptions.to_env`) and ``inflight`` invocations per
    worker replica (under the platform's replica ``cap``, if any), the rest the same on every
    platform (the image is)."""
    # the servers of the chart's transports as the functions see them, then the model store
    # (the operator's own, unless a transport's setting names it otherwise for the functions)
    env = dict(config.transport_env)
    for name, value in config.store.to_env().items():
        env.setdefault(name, value)
    env |= {
        **launcher,
        "FSD_CHANNEL": spec.channel,
        # the transports the chart runs: a request may choose only among them (docs/api.md)
        "FSD_CHANNELS": ",".join(config.channels),
        # the one model these functions serve: any other in the store is a 404 (docs/api.md)
        "FSD_MODELS": store_model,
        # the coordinator's fan-out; workers refuse invocations that carry a larger one
        "FSD_FANOUT": str(config.fanout),
        **_timeouts(role),
        "healthcheck_interval": f"{HEALTHCHECK_SECONDS}s",
        "FSD_SHUTDOWN_DELAY_SECONDS": str(HEALTHCHECK_SECONDS + SHUTDOWN_AFTER),
        "FSD_DRAIN_SECONDS": _DRAIN[role],
    }
    if role == "worker":
        env["max_inflight"] = str(inflight)
        env["FSD_THREADS"] = str(inflight + EXTRA_THREADS)
    else:  # what one worker invocation may use: the planner's budget (fsd.functions.coordinator)
        env["FSD_MEMORY_MB"] = str(worker_budget_mb(spec, config, inflight=inflight, cap=cap))
    return env


def worker_budget_mb(
    spec: ModelSpec, config: OperatorConfig, *, inflight: int, cap: int | None = None
) -> int:
    """MiB one worker invocation may use: the function's memory shared by the ``inflight``
    invocations one replica admits at once.

    The coordinator plans with it (``FSD_MEMORY_MB``) and refuses every request when it leaves
    a worker no more than it holds before any model (:data:`fsd.planner.BASE_MB`): such a spec
    could never serve, so it is a permanent ``InvalidSpec`` naming the memory that would do,
    never a deployment that answers 503 to everything. ``cap``: the platform's most replicas
    of a function (None: no cap), when it raised ``inflight`` above ``FSD_MAX_INFLIGHT``.
    """
    mib = memory_mib(spec.memory)
    budget = mib // inflight
    if budget <= BASE_MB:
        why = (
            f"{spec.workers} workers on at most {cap} replicas"
            if cap and inflight > config.max_inflight
            else "FSD_MAX_INFLIGHT"
        )
        raise SourceError(
            f"spec.resources.memory {spec.memory} is shared by the {inflight} invocations a "
            f"worker replica admits at once ({why}): {budget} MiB each, no more than the "
            f"{BASE_MB:g} MiB a worker holds before any model; give at least "
            f"{(int(BASE_MB) + 1) * inflight}Mi",
            reason="InvalidSpec",
        )
    return budget
