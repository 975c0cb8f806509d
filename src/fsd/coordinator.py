"""The coordinator: partition, launch, feed inputs, gather, and report latency and traffic.

Data flows one way: the coordinator sends each worker its slice of the inputs, workers exchange
activations among themselves, and only final per-image results come back.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import resource
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import auth, cost, kernels, launch, settings, wire
from fsd.channels import (
    COORDINATOR,
    Channel,
    ChannelConfig,
    configured,
    embedded,
    open_channel,
    transport,
)
from fsd.errors import ChannelError, FsdError, InputError, RunAborted, WorkerError
from fsd.launch import Launcher, LauncherOptions, make_launcher
from fsd.metrics import LayerMetrics, RunResult
from fsd.model.network import DTYPES, Network
from fsd.partition import LayerSource, as_layers, make_plan
from fsd.shard import CutLayers, Shard, ShardCutter, build_shards
from fsd.store import FolderStore, Manifest, ModelStore
from fsd.task import MAX_WINDOW, LayerSupply, ModelRef, WorkerTask

log = logging.getLogger(__name__)

MIB = 1 << 20

FOLDER_MODEL = "prepared"  # the model's name in a folder store made by prepare


@dataclass
class RunConfig:
    workers: int = 4
    channel: str = "local"
    partition: str = "contiguous"
    dtype: str = "float32"
    seed: int = 0
    timeout: float = settings.RUN_TIMEOUT  # the whole inference
    layer_timeout: float = settings.LAYER_TIMEOUT  # one layer's messages
    # per function, for the functions part of the cost (1769 MB = 1 vCPU); fsd.run sets the budget
    memory_mb: int = 1769
    platform: str = "local"  # where workers run: a name in fsd.launch.PLATFORMS
    platform_options: LauncherOptions | None = None  # its Options (None: its defaults)
    fanout: int = 0  # remote platforms: above this many workers, workers invoke workers (0: never)
    channel_config: ChannelConfig = field(default_factory=ChannelConfig)
    # model-parallel partitions per replica; the other workers are replicas (R = workers / P)
    # that split the images (0: one replica, every worker a partition: fsd.planner chooses)
    partitions: int = 0
    window: int = 0  # layers of weights a worker holds at once (0: every layer)

    def validate(self, network: Network) -> None:
        transport(self.channel)  # in the registry (InputError naming the choices if not)
        launch.options(self.platform, self.platform_options)  # likewise, and its own options
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.timeout <= 0 or self.layer_timeout <= 0:
            raise InputError("timeouts must be positive")
        if self.partitions and (self.partitions < 0 or self.workers % self.partitions):
            raise InputError(f"partitions {self.partitions} must divide workers {self.workers}")

    @property
    def model_parallel(self) -> int:
        """Partitions per replica (P): the model-parallel workers of one replica."""
        return self.partitions or self.workers


@dataclass
class Prepared:
    """A network cut for a given worker count, reusable across runs.

    Either in memory (``shards`` set: forked local workers inherit them), in a local folder
    store (``folder`` set: forked local workers stream their layers from it, ``window`` at a
    time, :meth:`layers`), still in its source (``cutter`` set: forked local workers cut their
    layers from ``source`` as they stream them), or in the model store (``model`` set: each
    worker downloads its own shard); ``infer`` needs only the small rest.
    """

    neurons: int
    depth: int
    edges: int
    bias: float
    ymax: float
    partitions: int  # P: model-parallel workers per replica (the model is cut for P)
    method: str
    planned_volume: int
    owners0: np.ndarray  # owner of each input pixel
    dtype: str
    plan_seconds: float
    shards: list[Shard] | None = None
    model: ModelRef | None = None
    folder: FolderStore | None = None
    window: int = 1
    source: LayerSource | None = None
    cutter: ShardCutter | None = None

    def layers(self, worker: int) -> LayerSupply | None:
        """What worker ``worker`` streams from when the model is in a local folder (its header
        is read and checked here, each layer by the worker as it goes) or still in its source;
        None otherwise."""
        if self.source is not None and self.cutter is not None:
            return CutLayers(self.source, self.cutter, worker, np.dtype(self.dtype))
        if self.folder is None:
            return None
        ref = ModelRef(FOLDER_MODEL, self.partitions, self.method)
        return self.folder.layers(ref, worker, self.dtype)


def prepare(
    network: Network | LayerSource,
    config: RunConfig,
    folder: Path | None = None,
    window: int = 0,
) -> Prepared:
    """Plan and cut the network (the part a deployment does once, ahead of any request).

    Reads the network one layer at a time. With ``folder``, each worker's layers are written
    there as they are cut (:class:`fsd.store.FolderStore`) and local workers stream them
    ``window`` at a time: no process holds the whole network. Without, an in-memory Network's
    shards are kept in memory for forked workers to inherit, and a source read on demand (a
    binary layer folder) stays where it is: each local worker cuts its own layers from it as
    it streams them (:class:`fsd.shard.CutLayers`; best with one partition, where the cut is
    the whole layer and nothing is copied).
    """
    source = as_layers(network)
    if isinstance(network, Network):
        config.validate(network)
    elif config.dtype not in DTYPES:
        raise InputError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    window = window or min(config.window or source.depth, MAX_WINDOW)  # 0: the config's
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise InputError(f"window must be an integer in 1..{MAX_WINDOW}, got {window!r}")
    t0 = time.perf_counter()
    plan = make_plan(source, config.model_parallel, config.partition, config.seed)
    shards, store, cutter = None, None, None
    if folder is None and isinstance(network, Network):
        shards = build_shards(source, plan, np.dtype(config.dtype))
    elif folder is None:
        if plan.workers == 1:  # a plan of more partitions has read (and checked) every layer
            _check_layers(source)
        cutter = ShardCutter(plan)
    else:
        store = FolderStore(folder)
        ref = ModelRef(FOLDER_MODEL, plan.workers, plan.method)
        store.write_layers(source, ref, ShardCutter(plan), np.dtype(config.dtype))
    kernels.warm_up(config.dtype)
    return Prepared(
        source.neurons,
        source.depth,
        source.edges(),
        source.bias,
        source.ymax,
        plan.workers,
        plan.method,
        plan.total_volume,
        plan.owners[0],
        config.dtype,
        time.perf_counter() - t0,
        shards=shards,
        folder=store,
        window=window,
        source=None if cutter is None else source,
        cutter=cutter,
    )


def _check_layers(source: LayerSource) -> None:
    """Read (and so check) every layer once, one at a time, before any worker starts: workers
    that cut their own layers from the source would otherwise find a bad one mid-run, a failed
    run instead of bad input refused up front (1920 layers of 65536 neurons: about a minute)."""
    n = source.neurons
    for k in range(1, source.depth + 1):
        w = source.layer(k)
        if w.shape != (n, n):
            raise InputError(f"layer {k} has shape {w.shape}, expected ({n}, {n})")
        del w


def prepare_stored(store: ModelStore, ref: ModelRef, manifest: Manifest | None = None) -> Prepared:
    """A model already cut and pushed (``fsd model push``): only the manifest and input owners.

    Pass ``manifest`` when it was just read, so it is not fetched twice.
    """
    t0 = time.perf_counter()
    manifest = manifest if manifest is not None else store.manifest(ref.name)
    if not manifest.has(ref.workers, ref.partition):
        cut = ", ".join(sorted(manifest.partitions)) or "none"
        raise InputError(
            f"model {ref.name!r} is not cut for {ref.workers} workers with {ref.partition!r} "
            f"(available: {cut}); push it with fsd model push --workers {ref.workers}"
        )
    info = manifest.partitions[Manifest.key(ref.workers, ref.partition)]
    return Prepared(
        manifest.neurons,
        manifest.layers,
        manifest.edges,
        manifest.bias,
        manifest.ymax,
        ref.workers,
        ref.partition,
        int(info.get("planned_volume", 0)),
        store.owners0(ref, neurons=manifest.neurons),
        manifest.dtype,
        time.perf_counter() - t0,
        model=ref,
        window=min(manifest.layers, MAX_WINDOW),  # every layer, unless a planner says less
    )


@contextlib.contextmanager
def serve(config: RunConfig) -> Iterator[ChannelConfig]:
    """The channel configuration of every replica of a run, starting an embedded server (one
    for all of them) when none is configured: the one place this is decided (:func:`fsd.run.run`
    enters it before loading anything; :func:`infer` again, a no-op once served).

    Remote workers (functions) must share the deployment's secret, which this refuses to run
    without, and cannot reach an embedded server on this machine's loopback.
    """
    cc = dataclasses.replace(config.channel_config, kind=config.channel)
    local = launch.platform(config.platform).LOCAL
    if not local and not cc.secret:
        raise ChannelError(
            "no deployment secret to authenticate frames and workers: set FSD_RUN_KEY "
            "(functions: mount the fsd-run-key secret)"
        )
    if configured(cc):
        yield cc
    elif not local:  # an embedded server on loopback is out of their reach
        server = transport(cc.kind).SERVER
        raise ChannelError(f"{cc.kind}: no server configured for remote workers ({server})")
    else:
        with embedded(cc) as started:
            yield started


def split_inputs(
    images: sp.csr_matrix, owner: np.ndarray, partitions: int, dtype: str
) -> list[list[np.ndarray]]:
    """Each of a replica's P workers' input columns as (row, local position, value) triplets."""
    coo = images.tocoo()
    local = np.empty(len(owner), np.int64)
    for p in range(partitions):
        mine = np.flatnonzero(owner == p)
        local[mine] = np.arange(len(mine))
    who = owner[coo.col]
    parts = []
    for p in range(partitions):
        sel = who == p
        parts.append(
            [
                coo.row[sel].astype(np.uint32),
                local[coo.col[sel]].astype(np.uint32),
                coo.data[sel].astype(dtype),
            ]
        )
    return parts


REPORT_MARGIN = 2.0
"""Seconds before the run's deadline by which workers give up waiting and say for whom."""
STALL_GRACE = 2.0
"""Seconds the coordinator waits, after a first worker said whom it gave up waiting for, for
the others to say it too (their layer timeouts fire within one layer's work of each other)."""


def _waited(msg: wire.Message, workers: int) -> tuple[int, list[int]] | None:
    """The (layer, peers) a failure RESULT says its worker gave up waiting for
    (:func:`fsd.worker.failure_report`), or None when it says none or says it malformed."""
    if len(msg.arrays) != 2:
        return None
    waited = msg.arrays[1]
    if waited.dtype != np.uint32 or waited.ndim != 1 or not 2 <= len(waited) <= workers + 1:
        return None
    layer, *peers = (int(v) for v in waited)
    if layer < 1 or any(p >= workers for p in peers):
        return None
    return layer, sorted(set(peers))


def _listed(workers: Iterable[int]) -> str:
    """``worker 3`` or ``workers 0, 1 and 3``."""
    ids = sorted(workers)
    if len(ids) == 1:
        return f"worker {ids[0]}"
    return f"workers {', '.join(map(str, ids[:-1]))} and {ids[-1]}"


def _waited_for(waits: dict[int, tuple[int, list[int]]]) -> set[int]:
    return {p for _, peers in waits.values() for p in peers}


def _stalled(waits: dict[int, tuple[int, list[int]]]) -> WorkerError:
    """Name the worker the others gave up waiting for: one waited for, waiting for nobody."""
    waited_for = _waited_for(waits)
    stalled = sorted(waited_for - set(waits)) or sorted(waited_for)
    worker = stalled[0]
    who = sorted(w for w, (_, peers) in waits.items() if worker in peers)
    layer = min(waits[w][0] for w in who)
    also = f" (so did {_listed(stalled[1:])})" if len(stalled) > 1 else ""
    return WorkerError(
        worker,
        f"stopped responding{also}: {_listed(who)} timed out waiting for its layer-{layer} "
        "activations",
        timed_out=True,
    )


def _overdue(launcher: Launcher, pending: list[int], seconds: float) -> WorkerError:
    """The run's deadline passed with ``pending`` workers unfinished: name the ones behind the
    others where the launcher knows each worker's progress, else list them all."""
    done = {w: n for w, n in launcher.worker_progress().items() if w in pending}
    if len(done) == len(pending) and len(set(done.values())) > 1:
        low = min(done.values())
        behind = [w for w in pending if done[w] == low]
        ahead = [w for w in pending if done[w] > low]
        return WorkerError(
            behind[0],
            f"stopped responding{f' (so did {_listed(behind[1:])})' if behind[1:] else ''}: "
            f"timed out after {seconds:g} s with layer {low + 1} unfinished, which "
            f"{_listed(ahead)} had finished",
            timed_out=True,
        )
    return WorkerError(
        pending[0], f"timed out after {seconds:g} s; still running: {pending}", timed_out=True
    )


def _gather(
    channel: Channel,
    launcher: Launcher,
    partitions: int,
    deadline: float,
    on_progress: Callable[[int], None] | None,
    stop: threading.Event | None = None,
    timeout: float = 0.0,
) -> dict[int, wire.Message]:
    """Every worker's RESULT; the first failure raised as a WorkerError naming its worker.

    A worker that timed out waiting for a peer's activations says for whom; once the others
    have had :data:`STALL_GRACE` to say it too, the peer they waited for is the one named.
    """
    results: dict[int, wire.Message] = {}
    waits: dict[int, tuple[int, list[int]]] = {}
    named_by = 0.0  # when the waits are told (STALL_GRACE after the first)
    pending = list(range(partitions))
    last = -1
    while pending:
        if stop is not None and stop.is_set():
            raise RunAborted("another replica of the run failed")
        got = channel.collect(wire.Kind.RESULT, 0, pending, timeout=0.05)
        for src, msg in got.items():
            if msg.header.flags & wire.FLAG_ERROR:
                waited = _waited(msg, partitions)
                if waited is None:
                    detail = bytes(msg.arrays[0]).decode(errors="replace")
                    # a worker that gave up waiting (for its input, say) ran out of time
                    late = detail.startswith(("ChannelTimeout:", "LayerTimeout:"))
                    raise WorkerError(src, detail, timed_out=late)
                waits[src] = waited
                named_by = named_by or time.monotonic() + STALL_GRACE
            else:
                results[src] = msg
        pending = [p for p in pending if p not in results and p not in waits]
        if on_progress is not None and (layer := launcher.progress()) != last:
            last = layer
            if stop is None or not stop.is_set():  # a stopped run reports no more progress
                on_progress(layer)
        dead = {w: why for w, why in launcher.failures().items() if w in pending}
        if dead and not channel.collect(wire.Kind.RESULT, 0, list(dead), timeout=0.2):
            worker, why = min(dead.items())
            raise WorkerError(worker, why)
        now = time.monotonic()
        if waits and (now > named_by or now > deadline or set(pending) <= _waited_for(waits)):
            raise _stalled(waits)
        if pending and now > deadline:
            raise _overdue(launcher, pending, timeout)
    return results


def _end_run(channel: Channel, launcher: Launcher, partitions: int, finished: bool) -> None:
    """Leave nothing behind, however the run ended (answer, failure, timeout, interrupt).

    A failed run first tells every worker to stop (ABORT) and lets the launcher stop them or wait
    for them, so nothing they send lands after the purge; the transport's TTL is only a backstop.
    """
    if not finished:
        for p in range(partitions):
            header = wire.Header(wire.Kind.ABORT, channel.run, 0, COORDINATOR, p)
            try:
                channel.send(wire.Message(header, []))
            except FsdError as exc:  # the transport may be what failed: clean up what we can
                # INFO: the run's failure (this transport's, most likely) is told once, by it
                log.info("could not tell worker %d to stop: %s", p, exc)
                break
        launcher.abort()
    channel.purge_run([COORDINATOR, *range(partitions)])


@dataclass
class _Replica:
    """One model-parallel group of a run: its images, its own run id, workers and channel."""

    rows: sp.csr_matrix
    run: bytes
    cc: ChannelConfig
    launcher: Launcher
    channel: Channel
    tasks: list[WorkerTask]
    input_bytes: int = 0
    results: dict[int, wire.Message] = field(default_factory=dict)
    finished: bool = False


def report_by(timeout: float) -> float:
    """When workers must give up and report (``time.time()``): :data:`REPORT_MARGIN` seconds (at
    most a tenth of the run) before the coordinator's own deadline, which starts later still
    (after the launch): a stalled worker is named by the peers waiting for it, not lost among
    the "still running"."""
    return time.time() + timeout - min(REPORT_MARGIN, timeout / 10)


def _open_replica(
    stack: contextlib.ExitStack,
    prepared: Prepared,
    rows: sp.csr_matrix,
    config: RunConfig,
    served: ChannelConfig,
) -> _Replica:
    """Launcher and coordinator endpoint of one replica, closed by ``stack`` after its run is
    ended (ABORT and purge when it did not finish): every exit path cleans up every replica."""
    run = uuid.uuid4().bytes
    deadline = report_by(config.timeout)
    # forked local workers share this process: each run gets a fresh secret of its own
    cc = (
        dataclasses.replace(served, secret=auth.new_secret())
        if launch.platform(config.platform).LOCAL
        else served
    )
    tasks = [
        WorkerTask(
            run,
            p,
            prepared.partitions,
            int(rows.shape[0]),
            prepared.shards[p] if prepared.shards is not None else None,
            prepared.bias,
            prepared.ymax,
            config.dtype,
            cc,
            config.layer_timeout,
            model=prepared.model,
            window=prepared.window,
            layers=prepared.layers(p),
            deadline=deadline,
        )
        for p in range(prepared.partitions)
    ]
    launcher = stack.enter_context(
        make_launcher(
            config.platform,
            config.platform_options,
            secret=cc.secret,
            timeout=config.timeout,
            fanout=config.fanout,
        )
    )
    channel = stack.enter_context(open_channel(cc, run, COORDINATOR))
    replica = _Replica(rows, run, cc, launcher, channel, tasks)
    stack.callback(lambda: _end_run(channel, launcher, prepared.partitions, replica.finished))
    return replica


def infer(
    prepared: Prepared,
    images: sp.csr_matrix,
    config: RunConfig,
    on_progress: Callable[[int], None] | None = None,
) -> RunResult:
    """One distributed inference of ``images``; the wall time excludes loading and planning.

    ``config.workers / prepared.partitions`` replicas each run the prepared model-parallel group on
    their own contiguous share of the images, at the same time, each as its own run on the
    channel (one embedded server for all); their results are merged as one run's.
    """
    if images.shape[1] != prepared.neurons:
        raise InputError(
            f"images have {images.shape[1]} pixels but the network has {prepared.neurons} neurons"
        )
    if config.dtype != prepared.dtype:
        raise FsdError("the network was prepared for another dtype")
    n_images = int(images.shape[0])
    replicas = max(1, min(config.workers // prepared.partitions, n_images))
    bounds = np.linspace(0, n_images, replicas + 1).round().astype(np.int64)
    with serve(config) as served, contextlib.ExitStack() as stack:
        group = [
            _open_replica(stack, prepared, images[bounds[r] : bounds[r + 1]], config, served)
            for r in range(replicas)
        ]
        if launch.platform(config.platform).LOCAL:
            _return_freed_memory()  # forked workers would otherwise inherit what planning left
        t0 = time.perf_counter()
        for g in group:  # every fork from this thread, before any gathering thread exists
            g.launcher.launch(g.tasks)
        for g in group:
            inputs = split_inputs(g.rows, prepared.owners0, prepared.partitions, config.dtype)
            for p, arrays in enumerate(inputs):
                header = wire.Header(wire.Kind.INPUT, g.run, 0, COORDINATOR, p)
                g.input_bytes += g.channel.send(wire.Message(header, arrays))
        deadline = time.monotonic() + config.timeout

        stop = threading.Event()  # set by the first failure: every replica's gathering ends
        failed: list[BaseException] = []

        def gather(r: int) -> None:
            g = group[r]
            progress = on_progress if r == 0 else None
            try:
                g.results = _gather(
                    g.channel,
                    g.launcher,
                    prepared.partitions,
                    deadline,
                    progress,
                    stop,
                    config.timeout,
                )
            except BaseException as exc:
                if not stop.is_set():
                    failed.append(exc)
                    stop.set()
                raise
            g.finished = True

        if replicas == 1:
            gather(0)
        else:
            with ThreadPoolExecutor(replicas, thread_name_prefix="fsd-replica") as pool:
                futures = [pool.submit(gather, r) for r in range(replicas)]
                try:
                    for done in futures:
                        done.result()
                except BaseException:  # a failure, or SIGTERM/^C here: stop the others too
                    stop.set()
                    if failed:
                        raise failed[0] from None
                    raise
        seconds = time.perf_counter() - t0
    parts = [
        _summarise(
            prepared, config, int(g.rows.shape[0]), g.results, seconds, g.channel, g.input_bytes
        )
        for g in group
    ]
    for g, part in zip(group, parts, strict=True):
        part.worker_replies = dict(g.launcher.replies)
    return parts[0] if replicas == 1 else _merge(parts, bounds, prepared, config, seconds)


def _counted_ops(
    worker: int, names: np.ndarray, counts: np.ndarray, known: dict[str, int]
) -> dict[str, int]:
    """A worker's counted operations, by name: each must be one this transport counts."""
    try:
        listed = bytes(names).decode("ascii").split("\n") if len(names) else []
    except UnicodeDecodeError:
        raise WorkerError(worker, "malformed RESULT: operation names are not ASCII") from None
    values = counts.tolist()
    if len(listed) != len(values) or len(set(listed)) != len(listed):
        raise WorkerError(worker, "malformed RESULT: operation names and counts do not pair")
    unknown = [name for name in listed if name not in known]
    if unknown:
        raise WorkerError(worker, f"malformed RESULT: unknown operation {unknown[0][:32]!r}")
    if any(not isinstance(n, int) or not 0 <= n < 1 << 53 for n in values):
        raise WorkerError(worker, "malformed RESULT: an operation count out of range")
    return dict(zip(listed, values, strict=True))


def _summarise(
    prepared: Prepared,
    config: RunConfig,
    n_images: int,
    results: dict[int, wire.Message],
    seconds: float,
    channel: Channel,
    input_bytes: int,
) -> RunResult:
    sums = np.zeros(n_images)
    alive = np.zeros(n_images, bool)
    depth, partitions = prepared.depth, prepared.partitions
    compute = np.zeros((partitions, depth))
    comm = np.zeros((partitions, depth))
    sent = np.zeros((partitions, depth), np.int64)
    msgs = np.zeros((partitions, depth), np.int64)
    result_bytes = 0
    ops = dict(channel.stats.ops)
    walls = [seconds]  # the coordinator runs as long as the inference
    rejected = channel.stats.rejected
    peak = _own_peak_bytes()
    process_peaks = [peak / MIB] + [0.0] * partitions  # the coordinator's, then each worker's
    for p, msg in results.items():
        if len(msg.arrays) != 10:
            raise WorkerError(p, f"malformed RESULT: {len(msg.arrays)} arrays, expected 10")
        rows, row_sums, compute[p], comm[p], sent[p], msgs[p], names, counted, wall, refused = (
            msg.arrays
        )
        rejected += int(refused[0])
        for op, n in _counted_ops(p, names, counted, ops).items():
            ops[op] += n
        walls.append(float(wall[0]))
        if len(wall) > 1:  # the worker's own peak resident memory, in bytes
            peak = max(peak, float(wall[1]))
            process_peaks[1 + p] = float(wall[1]) / MIB
        rows = rows.astype(np.int64)
        alive[rows] = True
        np.add.at(sums, rows, row_sums)
        result_bytes += sum(a.nbytes for a in msg.arrays)
    per_layer = [
        LayerMetrics(
            k + 1, float(compute[:, k].max()), float(comm[:, k].max()), int(sent[:, k].max())
        )
        for k in range(depth)
    ]
    categories = np.flatnonzero(alive) + 1
    worker_time = compute.sum() + comm.sum()
    return RunResult(
        categories=categories,
        row_sums=sums[categories - 1],
        seconds=seconds,
        images=n_images,
        edges=prepared.edges,
        workers=partitions,  # this replica's
        channel=config.channel,
        partition=prepared.method,
        dtype=config.dtype,
        bytes_sent=int(sent.sum()) + input_bytes + result_bytes,
        messages=int(msgs.sum()) + partitions * 2,
        activation_bytes=int(sent.sum()),
        planned_volume=prepared.planned_volume,
        comm_share=float(comm.sum() / worker_time) if worker_time > 0 else 0.0,
        plan_seconds=prepared.plan_seconds,
        per_layer=per_layer,
        ops=ops,
        frames_rejected=rejected,
        worker_compute=compute,
        worker_comm=comm,
        run_id=channel.run.hex(),
        cost=cost.estimate(
            transport(config.channel).BILLING,
            ops,
            invocations=partitions + 1,
            gb_seconds=cost.billed_gb_seconds(walls, config.memory_mb),
        ),
        function_seconds=walls,
        peak_rss_mb=peak / MIB,
        process_rss_mb=process_peaks,
        parallelism={"replicas": 1, "partitions": partitions, "window": prepared.window},
    )


def _return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``), where there is one.

    A forked worker starts with its parent's resident pages counted as its own: planning and
    cutting a 200-layer 65536-neuron net leaves 343 MB resident after its plan is freed, 225 MB
    after this. Elsewhere (no glibc) it does nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        log.debug("malloc_trim is not available here")


def _own_peak_bytes() -> float:
    """This process's peak resident memory (Linux reports ``ru_maxrss`` in KiB)."""
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _merge(
    parts: list[RunResult],
    bounds: np.ndarray,
    prepared: Prepared,
    config: RunConfig,
    seconds: float,
) -> RunResult:
    """The replicas' results as one run's: images renumbered, traffic and counts summed, each
    layer's figures the slowest replica's, one coordinator (it ran them all) in the cost."""
    categories = np.concatenate(
        [p.categories + int(b) for p, b in zip(parts, bounds, strict=False)]
    )
    compute = np.vstack([p.worker_compute for p in parts])
    comm = np.vstack([p.worker_comm for p in parts])
    ops: dict[str, int] = {}
    for part in parts:
        for op, n in part.ops.items():
            ops[op] = ops.get(op, 0) + n
    walls = [seconds] + [w for p in parts for w in p.function_seconds[1:]]
    per_layer = [
        LayerMetrics(
            layers[0].layer,
            max(m.compute_s for m in layers),
            max(m.comm_s for m in layers),
            max(m.bytes for m in layers),
        )
        for layers in zip(*(p.per_layer for p in parts), strict=True)
    ]
    worker_time = compute.sum() + comm.sum()
    first = parts[0]
    replies: dict[int, dict[str, Any]] = {}
    for r, part in enumerate(parts):
        replies |= {r * prepared.partitions + w: reply for w, reply in part.worker_replies.items()}
    return RunResult(
        categories=categories,
        row_sums=np.concatenate([p.row_sums for p in parts]),
        seconds=seconds,
        images=sum(p.images for p in parts),
        edges=first.edges,
        workers=config.workers,
        channel=first.channel,
        partition=first.partition,
        dtype=first.dtype,
        bytes_sent=sum(p.bytes_sent for p in parts),
        messages=sum(p.messages for p in parts),
        activation_bytes=sum(p.activation_bytes for p in parts),
        planned_volume=sum(p.planned_volume for p in parts),
        comm_share=float(comm.sum() / worker_time) if worker_time > 0 else 0.0,
        plan_seconds=first.plan_seconds,
        per_layer=per_layer,
        ops=ops,
        frames_rejected=sum(p.frames_rejected for p in parts),
        worker_compute=compute,
        worker_comm=comm,
        run_id=first.run_id,
        cost=cost.estimate(
            transport(config.channel).BILLING,
            ops,
            invocations=config.workers + 1,
            gb_seconds=cost.billed_gb_seconds(walls, config.memory_mb),
        ),
        worker_replies=replies,
        function_seconds=walls,
        peak_rss_mb=max(p.peak_rss_mb for p in parts),
        process_rss_mb=[max(p.process_rss_mb[0] for p in parts if p.process_rss_mb)]
        + [mb for p in parts for mb in p.process_rss_mb[1:]],
        parallelism={
            "replicas": len(parts),
            "partitions": prepared.partitions,
            "window": prepared.window,
        },
    )


def run(
    network: Network,
    images: sp.csr_matrix,
    config: RunConfig,
    on_progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Prepare and infer in one call."""
    return infer(prepare(network, config), images, config, on_progress)
