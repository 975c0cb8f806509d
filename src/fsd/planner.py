"""Parallelism from a memory budget: how many model-parallel partitions P each replica needs,
how many data-parallel replicas R = W / P share the images, and how many layers a worker holds.

For each P dividing W (at most the neurons), the planner takes the largest window that fits the
budget: every layer (``window = depth``) when ``worker_mb(P, depth) <= budget``, else the most
layers that do, at least :data:`MIN_WINDOW` (one computing, one arriving); a P where not even
that fits is out. Among the P that remain, it picks the one :func:`predict_seconds` says is
fastest; a prediction within :data:`TOLERANCE` of the best counts as a tie, won by fewer
partitions (the model is rough, and fewer partitions move fewer activations). Nothing fits:
:class:`InputError` with the estimate.

The time model (``make bench`` and ``make bench-scale`` print it beside each measured run:
docs/benchmarks.md) adds, for one cold run (as every ``fsd run`` is) on ``cores`` processors
(this machine's, or one per worker for functions):

- compute: every (edge, image) pair once, at :data:`EDGE_RATE` per core;
- loading: every worker reads its share of every layer once per run (streamed or held), so R
  replicas read the model R times: ``R * edges * (index + value bytes)`` at
  :data:`LOAD_BYTES_PER_S` per core. This is what makes replicas dear when the model is large;
- exchange (P > 1): every worker sends each of its P - 1 peers one message per layer, at
  :data:`MESSAGE_SECONDS` of processor time each (sealing, sending, waking the receiver,
  checking and placing it: on 2 cores, measured, it is the messages, not the bytes, that cost).

Calibrated on this machine (2 cores, 65536x120, 1000 images, W = 8: P = 1, 2, 4, 8 measured
22.8, 11.2, 13.6, 16.0 s against 22.8, 13.9, 11.9, 16.0 predicted; docs/benchmarks.md), so on
other hardware it orders the choices more than it predicts their times.

Model parallelism exists for models too large for one worker; where the model fits, it is pure
overhead (measured on 2 cores, 1024x120: 2 model-parallel workers were slower than 1, while 2
replicas of the whole model nearly halve the time), and the model says so: P = 1 has no
exchange, and when it fits it streams nothing.

A worker's memory (:func:`worker_mb`) is what it cannot share: the interpreter with numpy, scipy
and the compiled kernels (:data:`BASE_MB`, measured: 194 MB of RSS after ``kernels.warm_up``),
its share of ``window`` layers of weights (each edge stored in :data:`WEIGHT_LAYOUTS` layouts of
a 4-byte index and a value, :data:`STREAM_OVERHEAD` times that when they stream), and its
activations: the images of its replica times its share of the neurons, for the layer's input,
its output and the block received from peers, as if dense (a bound: challenge activations thin
out as images die).
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import SupportsIndex, TypedDict, cast

from fsd.errors import InputError

BASE_MB = 200.0
"""A worker process before any model or image: Python, numpy, scipy, numba and the warmed
kernels (194 MB measured with ``resource.getrusage`` after ``fsd.kernels.warm_up``)."""
WEIGHT_LAYOUTS = 2
"""Each edge is kept by rows and by columns (:mod:`fsd.shard`), for the two kernel paths."""
INDEX_BYTES = 4
MIN_WINDOW = 2
"""The fewest layers a streaming worker holds: the one it computes and the one arriving."""
STREAM_OVERHEAD = 1.5
"""Streamed layers take more than their arrays: each arrives (its stored bytes, then its column
layout derived) while older ones are freed, and the heap fragments. Measured on 65536x1920,
2 x 4 partitions: 2,517 MB with a window of 195 (2,045 estimated without this), 2,007 MB with
139 (this at 1.4): 9.1 MB a layer where 8.9 are counted, on a fixed part ~350 MB above the
estimate's. 1.5 leaves a margin. Held layers need none (1,309 MB against 1,407 estimated at
120 layers)."""
ACTIVATION_BLOCKS = 3
"""A layer's input, its output, and the block received from peers, each at most dense."""
MB = 1 << 20
EDGE_RATE = 8e10
"""(edge, image) pairs one core computes per second: 1.1e11 measured on the 1024x120 challenge
net (8000 images, 0.29 s), 6.4e10 on a generated 65536x120 net (1000 images, 3.9 s)."""
LOAD_BYTES_PER_S = 380e6
"""Stored weight bytes one core reads, checks and lays out per second (page cache to shard):
65536x120 with 8 replicas streaming, 16 GB read by 8 workers on 2 cores in 21 s."""
MESSAGE_SECONDS = 3.5e-3
"""Processor time per activation message (P > 1): 65536x120, 1000 images, W = 8 on 2 cores
took 6.7 and 11.8 s beyond compute and loading with 4 and 8 partitions (2,880 and 6,720
messages)."""
TOLERANCE = 0.1
"""Predictions this close to the fastest are a tie, won by fewer partitions."""
MAX_MEMORY_MB = 1 << 24
"""The largest budget per worker (16 TB)."""


class Range(TypedDict):
    """Bounds as :func:`fsd.settings.decimal` takes them: ``(low, high]`` when ``low_open``."""

    low: float
    high: float
    low_open: bool


MEMORY_RANGE: Range = {"low": BASE_MB, "high": float(MAX_MEMORY_MB), "low_open": True}
"""The one range of a memory budget per worker, in MB, for ``fsd run --memory-mb``,
``FSD_MEMORY_MB`` (parsed with :func:`fsd.settings.decimal`'s grammar) and :func:`choose`
(:func:`check_memory`): above :data:`BASE_MB`, what a worker holds before any model (at or
below it nothing fits), and at most :data:`MAX_MEMORY_MB`."""
#: Bounds of choose()'s sizes: at least the model store's (fsd.store), so a stored model that
#: passed its checks is never refused here as bad input.
LIMITS = {"workers": 1 << 20, "neurons": (1 << 31) - 1, "depth": 1 << 20, "images": 1 << 32}
MAX_EDGES = 1 << 62
MAX_VALUE_BYTES = 16


@dataclass(frozen=True)
class Parallelism:
    """What the planner chose (:func:`choose`; a partitioner's cut is a
    :class:`fsd.partition.Plan`), and the estimate behind it (``to_json``: the run's report)."""

    replicas: int
    partitions: int
    window: int  # layers of weights a worker holds at once (== depth: all of them)
    memory_mb: float  # the budget per worker
    estimate_mb: float  # the planner's estimate of a worker's peak
    predicted_s: float  # the time model's inference seconds for this choice

    def to_json(self) -> dict[str, float | int]:
        return {
            "replicas": self.replicas,
            "partitions": self.partitions,
            "window": self.window,
            "memory_mb": round(self.memory_mb, 1),
            "estimate_mb": round(self.estimate_mb, 1),
            "predicted_s": float(f"{self.predicted_s:.4g}"),
        }


def machine_share_mb(workers: int) -> float:
    """The default budget per worker on this machine: its memory split evenly (a coordinator
    and servers live in the same memory: they get one share between them)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    return total / (workers + 1)


def worker_mb(
    *,
    partitions: int,
    window: int,
    neurons: int,
    depth: int,
    edges: int,
    images: int,
    replicas: int,
    value_bytes: int,
) -> float:
    """The estimated peak of one worker (see the module docstring for each term)."""
    per_edge = WEIGHT_LAYOUTS * (INDEX_BYTES + value_bytes)
    weights = edges / depth * min(window, depth) * per_edge / partitions
    indptr = float(min(window, depth) * WEIGHT_LAYOUTS * (neurons + 1) * INDEX_BYTES)
    if window < depth:  # streamed: layers arrive while others are freed
        weights, indptr = weights * STREAM_OVERHEAD, indptr * STREAM_OVERHEAD
    share = math.ceil(images / replicas) * math.ceil(neurons / partitions)
    activations = ACTIVATION_BLOCKS * share * (INDEX_BYTES + value_bytes)
    return BASE_MB + (weights + indptr + activations) / MB


def predict_seconds(
    *,
    partitions: int,
    replicas: int,
    window: int,
    neurons: int,
    depth: int,
    edges: int,
    images: int,
    value_bytes: int = 4,
    cores: int | None = None,
) -> float:
    """The inference time the cost model above predicts (a rough guide, not a promise).

    ``window`` does not change it (a worker reads each of its layers once per run, streamed or
    held): it is there to say which choice is priced."""
    del window
    workers = partitions * replicas
    parallel = min(workers, cores or os.cpu_count() or 1)
    seconds = edges * images / (EDGE_RATE * parallel)
    seconds += replicas * edges * (INDEX_BYTES + value_bytes) / (LOAD_BYTES_PER_S * parallel)
    if partitions > 1:
        seconds += depth * workers * (partitions - 1) * MESSAGE_SECONDS / parallel
    return seconds


def _whole(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``, or InputError: a bool, a float (even 2.0), NaN or
    a string is no count, and a huge one is refused before any arithmetic overflows on it."""
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise InputError(f"{name} must be a whole number in {low}..{high}, got {value!r:.40}")
    number = operator.index(value)  # an int, or a numpy integer's value
    if not low <= number <= high:
        raise InputError(f"{name} must be a whole number in {low}..{high}, got {value!r:.40}")
    return number


def check_partitions(workers: int, partitions: int) -> None:
    """A forced P must divide W: the other workers are R = W / P whole replicas."""
    if workers % partitions:
        raise InputError(
            f"--partitions {partitions} must divide --workers {workers} (replicas = W / P)"
        )


def check_memory(memory_mb: object) -> float:
    """``memory_mb`` as a budget per worker within :data:`MEMORY_RANGE`, or InputError: a bool,
    NaN or a string is no budget, and a huge number is refused without ``float()`` of it."""
    low, high = MEMORY_RANGE["low"], MEMORY_RANGE["high"]
    if (
        isinstance(memory_mb, bool)
        or not isinstance(memory_mb, numbers.Real)
        or not low < cast(float, memory_mb) <= high  # False for NaN; exact for a huge int
    ):
        raise InputError(
            f"the memory budget must be a number of MB in ({low:.15g}, {high:.15g}], "
            f"got {memory_mb!r:.40}"
        )
    return float(memory_mb)


def choose(
    *,
    workers: int,
    neurons: int,
    depth: int,
    edges: int,
    images: int,
    memory_mb: float | None = None,
    partitions: int | None = None,
    allowed: Sequence[int] | None = None,
    value_bytes: int = 4,
    cores: int | None = None,
) -> Parallelism:
    """Choose P, R and the window for ``workers`` workers of ``memory_mb`` each (None: this
    machine's share); ``partitions`` forces P (it must divide ``workers``), ``allowed`` limits
    the choice (e.g. to the cuts a model store holds). ``cores``: processors the workers share
    (None: this machine's; functions: one each, so ``workers``)."""
    workers, neurons, depth, images = (
        _whole(name, value, 1, LIMITS[name])
        for name, value in (
            ("workers", workers),
            ("neurons", neurons),
            ("depth", depth),
            ("images", images),
        )
    )
    edges = _whole("edges", edges, 0, MAX_EDGES)
    value_bytes = _whole("value_bytes", value_bytes, 1, MAX_VALUE_BYTES)
    if cores is not None:
        cores = _whole("cores", cores, 1, LIMITS["workers"])
    budget = machine_share_mb(workers) if memory_mb is None else check_memory(memory_mb)
    if partitions is not None:
        partitions = _whole("partitions", partitions, 1, LIMITS["workers"])
        check_partitions(workers, partitions)
        if partitions > neurons:
            raise InputError(f"--partitions {partitions} > {neurons} neurons")
        candidates = [partitions]
    else:
        candidates = [p for p in range(1, workers + 1) if workers % p == 0 and p <= neurons]
    if allowed is not None:
        kept = {_whole("allowed partitions", p, 1, LIMITS["workers"]) for p in allowed}
        candidates = [p for p in candidates if p in kept]
        if not candidates:
            raise InputError(f"no allowed partition count divides {workers} workers")

    net = {"neurons": neurons, "depth": depth, "edges": edges, "images": images}

    def estimate(p: int, window: int) -> float:
        return worker_mb(
            partitions=p, window=window, replicas=workers // p, value_bytes=value_bytes, **net
        )

    options: list[Parallelism] = []
    for p in candidates:  # fewest partitions first
        window = depth
        if estimate(p, depth) > budget:  # streamed: the largest window that fits
            low = MIN_WINDOW
            if low >= depth or estimate(p, low) > budget:
                continue
            high = depth - 1  # estimate grows with the window: bisect the last that fits
            while low < high:
                mid = (low + high + 1) // 2
                low, high = (mid, high) if estimate(p, mid) <= budget else (low, mid - 1)
            window = low
        seconds = predict_seconds(
            partitions=p,
            replicas=workers // p,
            window=window,
            value_bytes=value_bytes,
            cores=cores,
            **net,
        )
        options.append(Parallelism(workers // p, p, window, budget, estimate(p, window), seconds))
    if options:
        fastest = min(o.predicted_s for o in options)
        return next(o for o in options if o.predicted_s <= fastest * (1 + TOLERANCE))
    worst = estimate(candidates[-1], min(MIN_WINDOW, depth))
    raise InputError(
        f"the model does not fit {workers} workers of {budget:.0f} MB: a worker would need "
        f"about {worst:.0f} MB with {candidates[-1]} partitions and a window of "
        f"{min(MIN_WINDOW, depth)} layers (more workers or more memory)"
    )
