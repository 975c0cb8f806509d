"""Prometheus metrics of fsd: what the serverless functions expose at ``GET /metrics``.

Why these metrics: a sparse-DNN inference spread over FaaS workers is slow for one of three
reasons, and each has its own series so a dashboard can tell them apart:

* the whole request is slow (``fsd_request_seconds``, by function: coordinator or worker);
* one worker computes or waits longer than the others on some layers
  (``fsd_layer_compute_seconds`` / ``fsd_layer_comm_seconds``, by worker);
* a worker starts cold and spends its time loading its shard (``fsd_shard_load_seconds``,
  cache hit vs miss).

Traffic (``fsd_bytes_total``, ``fsd_messages_total``), failures (``fsd_errors_total``, by kind) and
frames dropped as forged or damaged (``fsd_frames_rejected_total``: non-zero means someone is
writing into the channel who should not, or a transport corrupts data) complete the picture.
Everything lives in prometheus_client's default registry, which the functions' HTTP server serves;
nothing here starts a server.

Names follow Prometheus' rules (https://prometheus.io/docs/practices/naming/): a counter ends in
``_total``, anything with a unit ends in its base unit (``_seconds``, ``_bytes``, ``_usd``) and a
unitless 0..1 share in ``_ratio``; the unit is also declared (prometheus_client's ``unit=``, the
``# UNIT`` line of OpenMetrics). Every label value comes from a closed set or from the component's
own configuration, never from what a request or an exception says: ``fsd_errors_total``'s ``kind``
is an :class:`ErrorKind` (anything unknown counts as ``other``), so no input can create series.

A short-lived CLI run is not scraped, so :func:`push_run` sends one run's summary to a Prometheus
Pushgateway instead, in its own registry (so per-process series are not pushed twice). The
Pushgateway never forgets a group, so the group is the run's *configuration* (model, channel,
partition, workers), not its id: each run replaces the last run of its configuration (PUT), and the
gateway holds one group per configuration however many runs there are. Monitoring is best effort:
a push that fails is logged as a warning and never raised, because an unreachable Pushgateway must
not fail an inference.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway

from fsd.errors import (
    AuthError,
    ChannelError,
    ChannelTimeout,
    FsdError,
    InputError,
    ModelFormatError,
    ModelNotFound,
    RunAborted,
    ServiceError,
    StoreError,
    WireError,
    WorkerError,
)
from fsd.metrics import RunResult
from fsd.redact import redact, redact_text

log = logging.getLogger(__name__)

FUNCTIONS: Final = ("coordinator", "worker")


class ErrorKind(StrEnum):
    """The ``kind`` of a failed request: the functions' documented error codes (docs/api.md)."""

    MALFORMED_JSON = "malformed_json"
    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    UNKNOWN_MODEL = "unknown_model"
    NO_STORED_IMAGES = "no_stored_images"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TOO_LARGE = "request_too_large"
    REPLAYED_INVOCATION = "replayed_invocation"
    WORKER_FAILED = "worker_failed"
    WORKER_TIMED_OUT = "worker_timed_out"
    MALFORMED_MODEL = "malformed_model"
    NOT_CONFIGURED = "not_configured"
    CHANNEL_UNREACHABLE = "channel_unreachable"
    INTERNAL_ERROR = "internal_error"
    OTHER = "other"


ERROR_KINDS: Final = frozenset(ErrorKind)
"""Every value ``fsd_errors_total{kind}`` can take: the cardinality is bounded by this set."""

# fsd.errors classes -> the error code a function answers for them (fsd.functions.coordinator);
# looked up along the exception's MRO, most specific class first
_KIND_OF_CLASS: Final[dict[type[BaseException], ErrorKind]] = {
    ModelNotFound: ErrorKind.UNKNOWN_MODEL,
    ModelFormatError: ErrorKind.MALFORMED_MODEL,
    InputError: ErrorKind.INVALID_REQUEST,
    WireError: ErrorKind.INVALID_REQUEST,
    AuthError: ErrorKind.FORBIDDEN,
    ChannelTimeout: ErrorKind.WORKER_TIMED_OUT,
    RunAborted: ErrorKind.WORKER_FAILED,
    ChannelError: ErrorKind.CHANNEL_UNREACHABLE,
    StoreError: ErrorKind.CHANNEL_UNREACHABLE,  # the store: answered as a channel's (503)
    ServiceError: ErrorKind.CHANNEL_UNREACHABLE,
    WorkerError: ErrorKind.WORKER_FAILED,
    FsdError: ErrorKind.INTERNAL_ERROR,
}
# names a caller may pass: the kinds themselves and the classes' names (NotConfigured and
# MalformedJSON live in fsd.functions, above this module: known by name only)
_KIND_OF_NAME: Final[dict[str, ErrorKind]] = {
    **{kind.value: kind for kind in ErrorKind},
    **{cls.__name__.lower(): kind for cls, kind in _KIND_OF_CLASS.items()},
    "notconfigured": ErrorKind.NOT_CONFIGURED,
    "malformedjson": ErrorKind.MALFORMED_JSON,
}
_LONGEST_NAME: Final = max(len(name) for name in _KIND_OF_NAME)

# 1 ms .. 10 min: a warm worker answers in milliseconds, a big cold run takes minutes
REQUEST_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# 10 us .. 10 s: one layer of one worker, from a tiny shard to a large slow one
LAYER_BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

REQUEST_SECONDS: Final = Histogram(
    "fsd_request_seconds",
    "Seconds one function invocation took, by function (coordinator or worker).",
    ["function", "model", "channel"],
    buckets=REQUEST_BUCKETS,
    unit="seconds",
)
LAYER_COMPUTE_SECONDS: Final = Histogram(
    "fsd_layer_compute_seconds",
    "Seconds one worker spent computing one layer.",
    ["model", "channel", "worker"],
    buckets=LAYER_BUCKETS,
    unit="seconds",
)
LAYER_COMM_SECONDS: Final = Histogram(
    "fsd_layer_comm_seconds",
    "Seconds one worker spent sending and waiting for activations of one layer.",
    ["model", "channel", "worker"],
    buckets=LAYER_BUCKETS,
    unit="seconds",
)
BYTES: Final = Counter(
    "fsd_bytes",
    "Bytes sent over the channel (worker='all' when only the run total is known).",
    ["model", "channel", "worker"],
    unit="bytes",
)
MESSAGES: Final = Counter(
    "fsd_messages",
    "Messages sent over the channel (worker='all' when only the run total is known).",
    ["model", "channel", "worker"],
)
ERRORS: Final = Counter(
    "fsd_errors",
    "Failed requests, by function and kind (the error code answered: invalid_request, ...).",
    ["function", "kind"],
)
FRAMES_REJECTED: Final = Counter(
    "fsd_frames_rejected",
    "Frames dropped by any endpoint of a run: bad MAC (forged, damaged), misplaced, malformed.",
    ["model", "channel"],
)
SHARD_LOAD_SECONDS: Final = Histogram(
    "fsd_shard_load_seconds",
    "Seconds a worker spent getting its shard: cache hit (warm) or miss (cold).",
    ["model", "cache"],
    buckets=REQUEST_BUCKETS,
    unit="seconds",
)

# series pushed by push_run, one registry per run (see _run_registry)
RUN_METRICS: Final = (
    "fsd_run_seconds",
    "fsd_run_comm_share_ratio",
    "fsd_run_bytes",
    "fsd_run_messages",
    "fsd_run_frames_rejected",
    "fsd_run_cost_usd",
    "fsd_run_layer_compute_seconds",
    "fsd_run_layer_comm_seconds",
)
# every metric family name this module defines, as written in PromQL (counters end in _total)
METRIC_NAMES: Final = (
    "fsd_request_seconds",
    "fsd_layer_compute_seconds",
    "fsd_layer_comm_seconds",
    "fsd_bytes_total",
    "fsd_messages_total",
    "fsd_errors_total",
    "fsd_frames_rejected_total",
    "fsd_shard_load_seconds",
    *RUN_METRICS,
)


def observe_request(function: str, model: str, channel: str, seconds: float) -> None:
    """Record one invocation of ``function`` ("coordinator" or "worker") lasting ``seconds``."""
    REQUEST_SECONDS.labels(function=function, model=model, channel=channel).observe(seconds)


def error_kind(what: str | BaseException) -> ErrorKind:
    """The closed-set kind of an error code ("invalid request"), a kind, an exception or its
    class name; ``other`` for anything else, so no text can become a new label value."""
    if isinstance(what, BaseException):
        for cls in type(what).__mro__:
            kind = _KIND_OF_CLASS.get(cls) or _KIND_OF_NAME.get(cls.__name__.lower())
            if kind is not None:
                return kind
        return ErrorKind.OTHER
    if not isinstance(what, str) or len(what) > _LONGEST_NAME + 8:
        return ErrorKind.OTHER
    name = what.strip().lower().replace(" ", "_").replace("-", "_")
    return _KIND_OF_NAME.get(name, ErrorKind.OTHER)


def observe_error(function: str, kind: str | BaseException) -> None:
    """Count one failed request of ``function``, its ``kind`` mapped by :func:`error_kind`."""
    who = function if function in FUNCTIONS else "other"
    ERRORS.labels(function=who, kind=error_kind(kind).value).inc()


def observe_shard_load(model: str, hit: bool, seconds: float) -> None:
    """Record how long a worker took to get its shard, so warm and cold starts are compared."""
    SHARD_LOAD_SECONDS.labels(model=model, cache="hit" if hit else "miss").observe(seconds)


def _per_worker(result: RunResult, name: str) -> np.ndarray | None:
    """An optional per-worker total (``worker_bytes``, ``worker_messages``) if the result has it.

    RunResult carries only run totals today; a per-worker array (shape (workers,) or
    (workers, layers)) is used when present, so the counters get finer without an API change.
    """
    value: Any = getattr(result, name, None)
    if value is None:
        return None
    array = np.asarray(value)
    if array.ndim == 0 or array.shape[0] != result.workers or array.size == 0:
        return None
    totals: np.ndarray = array.reshape(array.shape[0], -1).sum(axis=1)
    return totals


def observe_run(result: RunResult, model: str) -> None:
    """Fill the layer histograms (one observation per worker and layer) and the traffic counters.

    The histograms take every worker's seconds, not the per-layer maximum, so a dashboard can see
    which worker is the straggler. Counters are per worker when the result has per-worker totals,
    else the run totals go to ``worker="all"``.
    """
    channel = result.channel
    FRAMES_REJECTED.labels(model=model, channel=channel).inc(max(result.frames_rejected, 0))
    for matrix, histogram in (
        (result.worker_compute, LAYER_COMPUTE_SECONDS),
        (result.worker_comm, LAYER_COMM_SECONDS),
    ):
        array = np.asarray(matrix, dtype=float)
        if array.ndim != 2:
            continue
        for w, row in enumerate(array):
            child = histogram.labels(model=model, channel=channel, worker=str(w))
            for seconds in row.tolist():
                child.observe(max(float(seconds), 0.0))
    for counter, total, per_worker_name in (
        (BYTES, result.bytes_sent, "worker_bytes"),
        (MESSAGES, result.messages, "worker_messages"),
    ):
        per_worker = _per_worker(result, per_worker_name)
        if per_worker is None:
            counter.labels(model=model, channel=channel, worker="all").inc(max(total, 0))
        else:
            for w, amount in enumerate(per_worker.tolist()):
                counter.labels(model=model, channel=channel, worker=str(w)).inc(max(amount, 0))


def _run_registry(result: RunResult, model: str) -> CollectorRegistry:
    """A fresh registry holding one run's summary as gauges, ready to push."""
    registry = CollectorRegistry()
    labels = grouping_key(result, model)
    names = list(labels)
    scalars = (  # (name, help, unit: "" for a count of things, value)
        ("fsd_run_seconds", "Inference seconds of the run.", "seconds", result.seconds),
        (
            "fsd_run_comm_share_ratio",
            "Communication share of total worker time (0..1).",
            "ratio",
            result.comm_share,
        ),
        (
            "fsd_run_bytes",
            "Bytes sent over the channel during the run.",
            "bytes",
            result.bytes_sent,
        ),
        ("fsd_run_messages", "Messages sent over the channel during the run.", "", result.messages),
        (
            "fsd_run_frames_rejected",
            "Frames any endpoint of the run dropped (bad MAC, misplaced, malformed).",
            "",
            result.frames_rejected,
        ),
    )
    for name, doc, unit, value in scalars:
        Gauge(name, doc, names, registry=registry, unit=unit).labels(**labels).set(value)
    if result.cost is not None:
        Gauge(
            "fsd_run_cost_usd", "Estimated cost of the run at AWS list prices.", names,
            registry=registry, unit="usd",
        ).labels(**labels).set(result.cost.total_usd)  # fmt: skip
    compute = Gauge(
        "fsd_run_layer_compute_seconds",
        "Per layer, the slowest worker's compute seconds.",
        [*names, "layer"],
        registry=registry,
        unit="seconds",
    )
    comm = Gauge(
        "fsd_run_layer_comm_seconds",
        "Per layer, the slowest worker's communication seconds.",
        [*names, "layer"],
        registry=registry,
        unit="seconds",
    )
    for m in result.per_layer:
        compute.labels(**labels, layer=str(m.layer)).set(m.compute_s)
        comm.labels(**labels, layer=str(m.layer)).set(m.comm_s)
    return registry


def grouping_key(result: RunResult, model: str) -> dict[str, str]:
    """The Pushgateway group of a run: its configuration, never its id.

    The Pushgateway keeps every group until someone deletes it (README, and "When to use the
    Pushgateway": https://prometheus.io/docs/practices/pushing/), so a key unique per run grows
    without bound. Deleting the group after the run is no cure: Prometheus would rarely scrape it
    in between. A key that repeats replaces the group (PUT), so the gateway holds the last run of
    each configuration, as many groups as configurations run, and a run id never becomes a label
    (in Prometheus, one new series per run).
    """
    return {
        "model": model,
        "channel": result.channel,
        "partition": result.partition,
        "workers": str(result.workers),
    }


def push_run(
    result: RunResult, model: str, gateway: str, job: str = "fsd", *, timeout: float = 5.0
) -> bool:
    """Push one run's summary to the Pushgateway at ``gateway``, replacing the last run of its
    configuration (:func:`grouping_key`).

    Returns whether the push succeeded. Never raises: the run already happened, and losing its
    metrics is better than failing it because monitoring is down (``timeout`` bounds the wait).
    """
    run_id = result.run_id or "unknown"
    try:
        registry = _run_registry(result, model)
        push_to_gateway(
            gateway,
            job=job,
            registry=registry,
            grouping_key=grouping_key(result, model),
            timeout=timeout,
        )
    except Exception as exc:  # monitoring is best effort, whatever went wrong
        where, why = redact(gateway), redact_text(str(exc))
        log.warning("could not push run %s metrics to Pushgateway %s: %s", run_id, where, why)
        return False
    log.debug("pushed run %s metrics to %s (job %s)", run_id, redact(gateway), job)
    return True
