"""The coordinator: partition, launch, feed inputs, gather, and report latency and traffic.

Data flows one way: the coordinator sends each worker its slice of the inputs, workers exchange
activations among themselves, and only final per-image results come back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fsd import auth, cost, kernels, settings, wire
from fsd.channels import COORDINATOR, Channel, ChannelConfig, open_channel, transport
from fsd.errors import ChannelError, FsdError, InputError, WorkerError
from fsd.launch import Launcher, make_launcher
from fsd.metrics import LayerMetrics, RunResult
from fsd.model.network import Network
from fsd.partition import LayerSource, as_layers, make_plan
from fsd.shard import Shard, ShardCutter, build_shards
from fsd.store import FolderStore, Manifest, ModelStore, StoredLayers
from fsd.task import MAX_WINDOW, ModelRef, WorkerTask

log = logging.getLogger(__name__)

DTYPES = ("float32", "float64")
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
    memory_mb: int = 1769  # per function, for the Lambda part of the cost (1769 MB = 1 vCPU)
    launcher: str = "local"  # or "openfaas": workers are function invocations
    worker_urls: tuple[str, ...] = ()  # openfaas: the worker function's URL(s)
    gateway_user: str = ""
    gateway_password: str = field(default="", repr=False)
    fanout: int = 0  # openfaas, lambda: above this many workers, workers invoke workers (0: never)
    worker_function: str = ""  # lambda: the worker function's name or ARN
    failure_queue: str = ""  # lambda: the SQS queue its OnFailure records go to ("": none)
    channel_config: ChannelConfig = field(default_factory=ChannelConfig)

    def validate(self, network: Network) -> None:
        transport(self.channel)  # in the registry (InputError naming the choices if not)
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.timeout <= 0 or self.layer_timeout <= 0:
            raise InputError("timeouts must be positive")


@dataclass
class Prepared:
    """A network cut for a given worker count, reusable across runs.

    Either in memory (``shards`` set: forked local workers inherit them), in a local folder
    store (``folder`` set: forked local workers stream their layers from it, ``window`` at a
    time, :meth:`layers`), or in the model store (``model`` set: each worker downloads its own
    shard); ``infer`` needs only the small rest.
    """

    neurons: int
    depth: int
    edges: int
    bias: float
    ymax: float
    workers: int
    method: str
    planned_volume: int
    owners0: np.ndarray  # owner of each input pixel
    dtype: str
    plan_seconds: float
    shards: list[Shard] | None = None
    model: ModelRef | None = None
    folder: FolderStore | None = None
    window: int = 1

    def layers(self, worker: int) -> StoredLayers | None:
        """What worker ``worker`` streams from when the model is in a local folder (else None):
        its header is read and checked here, each layer by the worker as it goes."""
        if self.folder is None:
            return None
        ref = ModelRef(FOLDER_MODEL, self.workers, self.method)
        return self.folder.layers(ref, worker, self.dtype)


def prepare(
    network: Network | LayerSource,
    config: RunConfig,
    folder: Path | None = None,
    window: int = 1,
) -> Prepared:
    """Plan and cut the network (the part a deployment does once, ahead of any request).

    Reads the network one layer at a time. With ``folder``, each worker's layers are written
    there as they are cut (:class:`fsd.store.FolderStore`) and local workers stream them
    ``window`` at a time: no process holds the whole network. Without, the shards are kept in
    memory for forked workers to inherit.
    """
    source = as_layers(network)
    if isinstance(network, Network):
        config.validate(network)
    elif config.dtype not in DTYPES:
        raise InputError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}")
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= MAX_WINDOW:
        raise InputError(f"window must be an integer in 1..{MAX_WINDOW}, got {window!r}")
    t0 = time.perf_counter()
    plan = make_plan(source, config.workers, config.partition, config.seed)
    shards, store = None, None
    if folder is None:
        shards = build_shards(source, plan, np.dtype(config.dtype))
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
    )


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
    )


@contextlib.contextmanager
def _transport(config: RunConfig) -> Iterator[ChannelConfig]:
    """The channel configuration to use, starting an embedded server when none is configured.

    Local workers are forked from this process, so every run gets a fresh secret of its own;
    remote workers (functions) must share the deployment's, which this refuses to run without.
    """
    cc = dataclasses.replace(config.channel_config, kind=config.channel)
    if config.launcher == "local":
        cc = dataclasses.replace(cc, secret=auth.new_secret())
    elif not cc.secret:
        raise ChannelError(
            "no deployment secret to authenticate frames and workers: set FSD_RUN_KEY "
            "(functions: mount the fsd-run-key secret)"
        )
    cls = transport(cc.kind)
    if cls.has_server(cc, os.environ):
        yield cc
    elif config.launcher != "local":  # an embedded server on loopback is out of their reach
        raise ChannelError(f"{cc.kind}: no server configured for remote workers ({cls.SERVER})")
    else:
        with cls.embedded(cc) as started:
            yield started


def _split_inputs(
    images: sp.csr_matrix, owner: np.ndarray, workers: int, dtype: str
) -> list[list[np.ndarray]]:
    """Each worker's input columns as (row, local position, value) triplets."""
    coo = images.tocoo()
    local = np.empty(len(owner), np.int64)
    for p in range(workers):
        mine = np.flatnonzero(owner == p)
        local[mine] = np.arange(len(mine))
    who = owner[coo.col]
    parts = []
    for p in range(workers):
        sel = who == p
        parts.append(
            [
                coo.row[sel].astype(np.uint32),
                local[coo.col[sel]].astype(np.uint32),
                coo.data[sel].astype(dtype),
            ]
        )
    return parts


def _gather(
    channel: Channel,
    launcher: Launcher,
    workers: int,
    deadline: float,
    on_progress: Callable[[int], None] | None,
) -> dict[int, wire.Message]:
    results: dict[int, wire.Message] = {}
    pending = list(range(workers))
    last = -1
    while pending:
        got = channel.collect(wire.Kind.RESULT, 0, pending, timeout=0.05)
        for src, msg in got.items():
            if msg.header.flags & wire.FLAG_ERROR:
                raise WorkerError(src, bytes(msg.arrays[0]).decode(errors="replace"))
            results[src] = msg
        pending = [p for p in pending if p not in results]
        if on_progress is not None and (layer := launcher.progress()) != last:
            last = layer
            on_progress(layer)
        dead = {w: why for w, why in launcher.failures().items() if w in pending}
        if dead and not channel.collect(wire.Kind.RESULT, 0, list(dead), timeout=0.2):
            worker, why = min(dead.items())
            raise WorkerError(worker, why)
        if pending and time.monotonic() > deadline:
            raise WorkerError(pending[0], f"timed out; still running: {pending}")
    return results


def _end_run(channel: Channel, launcher: Launcher, workers: int, finished: bool) -> None:
    """Leave nothing behind, however the run ended (answer, failure, timeout, interrupt).

    A failed run first tells every worker to stop (ABORT) and lets the launcher stop them or wait
    for them, so nothing they send lands after the purge; the transport's TTL is only a backstop.
    """
    if not finished:
        for p in range(workers):
            header = wire.Header(wire.Kind.ABORT, channel.run, 0, COORDINATOR, p)
            try:
                channel.send(wire.Message(header, []))
            except FsdError as exc:  # the transport may be what failed: clean up what we can
                log.warning("could not tell worker %d to stop: %s", p, exc)
                break
        launcher.abort()
    channel.purge_run([COORDINATOR, *range(workers)])


def infer(
    prepared: Prepared,
    images: sp.csr_matrix,
    config: RunConfig,
    on_progress: Callable[[int], None] | None = None,
) -> RunResult:
    """One distributed inference of ``images``; the wall time excludes loading and planning."""
    if images.shape[1] != prepared.neurons:
        raise InputError(
            f"images have {images.shape[1]} pixels but the network has {prepared.neurons} neurons"
        )
    if config.dtype != prepared.dtype:
        raise FsdError("the network was prepared for another dtype")
    run = uuid.uuid4().bytes
    n_images = int(images.shape[0])
    inputs = _split_inputs(images, prepared.owners0, prepared.workers, config.dtype)
    with _transport(config) as cc:
        tasks = [
            WorkerTask(
                run,
                p,
                prepared.workers,
                n_images,
                prepared.shards[p] if prepared.shards is not None else None,
                prepared.bias,
                prepared.ymax,
                config.dtype,
                cc,
                config.layer_timeout,
                model=prepared.model,
            )
            for p in range(prepared.workers)
        ]
        t0 = time.perf_counter()
        launcher = make_launcher(
            config.launcher,
            config.worker_urls,
            config.timeout,
            config.gateway_user,
            config.gateway_password,
            config.fanout,
            secret=cc.secret,
            function=config.worker_function,
            failure_queue=config.failure_queue,
        )
        with launcher, open_channel(cc, run, COORDINATOR) as channel:
            finished = False
            try:
                launcher.launch(tasks)
                input_bytes = 0
                for p, arrays in enumerate(inputs):
                    header = wire.Header(wire.Kind.INPUT, run, 0, COORDINATOR, p)
                    input_bytes += channel.send(wire.Message(header, arrays))
                deadline = time.monotonic() + config.timeout
                results = _gather(channel, launcher, prepared.workers, deadline, on_progress)
                seconds = time.perf_counter() - t0
                finished = True
            finally:
                _end_run(channel, launcher, prepared.workers, finished)
    result = _summarise(prepared, config, n_images, results, seconds, channel, input_bytes)
    result.worker_replies = dict(launcher.replies)
    return result


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
    depth, workers = prepared.depth, prepared.workers
    compute = np.zeros((workers, depth))
    comm = np.zeros((workers, depth))
    sent = np.zeros((workers, depth), np.int64)
    msgs = np.zeros((workers, depth), np.int64)
    result_bytes = 0
    ops = dict(channel.stats.ops)
    walls = [seconds]  # the coordinator runs as long as the inference
    rejected = channel.stats.rejected
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
        workers=workers,
        channel=config.channel,
        partition=prepared.method,
        dtype=config.dtype,
        bytes_sent=int(sent.sum()) + input_bytes + result_bytes,
        messages=int(msgs.sum()) + workers * 2,
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
            invocations=workers + 1,
            gb_seconds=cost.lambda_gb_seconds(walls, config.memory_mb),
        ),
    )


def run(
    network: Network,
    images: sp.csr_matrix,
    config: RunConfig,
    on_progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Prepare and infer in one call."""
    return infer(prepare(network, config), images, config, on_progress)
