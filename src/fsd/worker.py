"""The worker: one shard, one layer loop, talking only through its Channel.

Per layer: send each peer the non-zero activations it needs (an empty message when there are
none, so no receiver ever waits on a silent sender), multiply what is local while those messages
travel, then fold in what arrived and finish the layer (bias on non-zeros, ReLU, cap).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fsd import kernels, untrusted, wire
from fsd.channels.base import COORDINATOR, Channel
from fsd.errors import ChannelTimeout, FsdError, InputError, RunAborted, WireError
from fsd.model.network import DTYPES
from fsd.shard import LayerShard, Sends, Shard
from fsd.task import MAX_RUN_IMAGES, LayerSupply, WorkerTask

log = logging.getLogger(__name__)


_MAX_ENTRIES = 1 << 31  # more non-zeros than any frame can carry (wire.MAX_BODY is 1 GiB)


def _indices(what: str, a: np.ndarray, bound: int) -> np.ndarray:
    """``a`` checked as indices in [0, bound), as u32 (the type the kernels are compiled for)."""
    untrusted.check_index(what, a, bound, WireError)
    return a.astype(np.uint32, copy=False)


def _values(
    what: str, v: np.ndarray, dtype: np.dtype[np.floating], cap: float | None
) -> np.ndarray:
    """Values of the run's dtype (no lossy cast), finite; within (0, cap] when ``cap`` is given
    (a layer's outputs: bias only on non-zeros, ReLU, then the cap)."""
    if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype != dtype:
        raise WireError(f"{what}: expected 1-D {dtype} values, got {untrusted.describe(v)}")
    if cap is None:
        untrusted.check_finite(what, v, WireError)
    elif len(v) and not (v.min() > 0 and v.max() <= dtype.type(cap)):
        raise WireError(f"{what}: activations must lie in (0, {cap}]")
    return v


def _counts(what: str, n: np.ndarray, rows: int, total: int) -> np.ndarray:
    """Per-row counts: one per row, each at least 1, summing exactly to ``total``."""
    if not isinstance(n, np.ndarray) or n.ndim != 1 or n.dtype.kind not in "ui":
        raise WireError(f"{what}: counts must be a 1-D integer array, got {untrusted.describe(n)}")
    if len(n) != rows or total >= _MAX_ENTRIES:
        raise WireError(f"{what}: {len(n)} counts for {rows} rows and {total} values")
    if rows and (int(n.min()) < 1 or int(n.max()) > total):
        raise WireError(f"{what}: counts must lie in 1..{total}")
    # rows <= MAX_RUN_IMAGES and each count <= total < 2**31: the sum cannot wrap in 64 bits
    if int(n.sum(dtype=np.uint64)) != total:
        raise WireError(f"{what}: counts add up to {int(n.sum(dtype=np.uint64))}, not {total}")
    return n


class LayerFeed:
    """Hands the worker its layer shards one at a time, fetching ahead in a background thread.

    At most ``window`` layer shards are held at once, the one computing included: a layer's
    slot is taken when its fetch starts and given back by :meth:`release`, so the worker's
    weights are bounded by the window, whatever the depth. ``max_held`` records the most held
    at any moment (tests check the bound with it, not with RSS).
    """

    def __init__(self, supply: LayerSupply, window: int) -> None:
        if window < 1:
            raise InputError(f"window {window} must be at least 1")
        self.supply, self.window = supply, window
        self.inputs, self.depth, self.first = supply.inputs, supply.depth, supply.first
        self.held = 0
        self.max_held = 0
        self._ready: dict[int, tuple[LayerShard, Sends]] = {}
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._fetch_all, name="fsd-layer-feed", daemon=True)
        self._thread.start()

    def _fetch_all(self) -> None:
        for k in range(self.depth):
            with self._cond:
                while self.held >= self.window and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                self.held += 1
                self.max_held = max(self.max_held, self.held)
            try:
                item = self.supply.layer(k)
            except BaseException as exc:  # handed to the worker, which reports it
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[k] = item
                self._cond.notify_all()
            del item  # the feed's only reference is in _ready: the worker drops it after use

    def get(self, k: int, timeout: float) -> tuple[LayerShard, Sends]:
        """Layer ``k`` and the sends of layer k+1, once fetched (a fetch error is raised here)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while k not in self._ready:
                if self._error is not None:
                    raise self._error
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FsdError(f"layer {k + 1} did not arrive within {timeout:g} s")
                self._cond.wait(left)
            return self._ready.pop(k)

    def release(self) -> None:
        """The worker is done with its current layer (and holds no reference to it)."""
        with self._cond:
            self.held -= 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._ready.clear()
            self._cond.notify_all()
        self._thread.join(timeout=1.0)


class ShardFeed:
    """A whole shard already in memory (a forked worker's) behind the feed's interface."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.inputs, self.depth = shard.inputs, len(shard.layers)
        self.first = shard.layers[0].sends
        self.held = self.max_held = self.depth

    def get(self, k: int, timeout: float) -> tuple[LayerShard, Sends]:
        layers = self.shard.layers
        return layers[k], layers[k + 1].sends if k + 1 < len(layers) else []

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


def _check_task(task: WorkerTask) -> None:
    """The shard must be this worker's, for this many workers and this dtype (a model store may
    serve another), and the image count must fit the u32 row ids, before any kernel runs."""
    if not 0 <= task.images <= MAX_RUN_IMAGES:
        raise InputError(f"images={task.images} is outside 0..{MAX_RUN_IMAGES}")
    if task.dtype not in DTYPES:
        raise InputError(f"dtype {task.dtype!r} is not float32 or float64")
    shard = task.shard
    if shard is None:
        if task.layers is None:
            raise FsdError("worker started without its shard")
        return  # a streamed layer is checked as it arrives (fsd.shard.LayerReader)
    if shard.worker != task.worker:
        raise InputError(f"worker {task.worker} was given the shard of worker {shard.worker}")
    if task.dtype not in DTYPES:
        raise InputError(f"dtype {task.dtype!r} is not float32 or float64")
    for k, layer in enumerate(shard.layers):
        _check_layer(task, k, layer)


def _check_layer(task: WorkerTask, k: int, layer: LayerShard) -> None:
    """The layer names only workers of this run and holds weights of the run's dtype."""
    dtype = np.dtype(task.dtype)
    peers = [*layer.sources, *(dst for dst, _, _ in layer.sends)]
    if any(not 0 <= p < task.workers for p in peers):
        raise InputError(f"layer {k} of the shard names a worker outside 0..{task.workers - 1}")
    if any(a.dtype != dtype for part in layer.parts for a in (part.w_local[2], part.w_remote[2])):
        raise InputError(f"layer {k} of the shard is not {dtype}")


def _input_matrix(task: WorkerTask, msg: wire.Message) -> kernels.Csr:
    """This worker's input columns, from the coordinator's (row, local column, value) triplets."""
    if len(msg.arrays) != 3 or len({len(a) for a in msg.arrays}) != 1:
        raise WireError("INPUT must carry three arrays of equal length")
    supply = task.shard if task.shard is not None else task.layers
    width = len(supply.inputs) if supply is not None else 0
    rows = _indices("INPUT rows", msg.arrays[0], task.images)
    cols = _indices("INPUT columns", msg.arrays[1], width)
    vals = _values("INPUT values", msg.arrays[2], np.dtype(task.dtype), None)
    csr: kernels.Csr = kernels.coo_to_csr(task.images, rows, cols, vals)
    return csr


_U16 = np.empty(0, np.uint16)
_U32 = np.empty(0, np.uint32)


def _activations(y: kernels.Csr, selmap: np.ndarray, wanted: int) -> list[np.ndarray]:
    """An ACT message's arrays: rows with any, their counts, positions, values (see gather)."""
    like = _U16 if wanted <= 1 << 16 else _U32
    return list(kernels.gather_columns(*y, selmap, like))


def _assemble(task: WorkerTask, got: dict[int, wire.Message], layer: LayerShard) -> kernels.Csr:
    """Stack the received activations into one CSR over the remote columns, sources in order.

    Each source's arrays are checked as gather_columns makes them: rows strictly ascending and
    in range, counts matching, positions within that source's block, values of the run's dtype
    (and, past the first layer, a layer's outputs: in (0, ymax]).
    """
    dtype = np.dtype(task.dtype)
    rows, cols, vals = [], [], []
    ends = [*layer.offsets[1:], layer.n_remote]
    for src, off, end in zip(layer.sources, layer.offsets, ends, strict=True):
        msg = got[src]
        what = f"ACT from {src}"
        if len(msg.arrays) != 4:
            raise WireError(f"{what} has {len(msg.arrays)} arrays, expected 4")
        r = _indices(f"{what}: rows", msg.arrays[0], task.images)
        if len(r) > 1 and not (r[1:] > r[:-1]).all():
            raise WireError(f"{what}: rows must be strictly ascending")
        c = _indices(f"{what}: positions", msg.arrays[2], end - off)
        n = _counts(what, msg.arrays[1], len(r), len(c))
        cap = task.ymax if msg.header.layer > 1 else None  # layer 1 carries the input values
        vals.append(_values(f"{what}: values", msg.arrays[3], dtype, cap))
        rows.append(np.repeat(r, n))
        cols.append(c + np.uint32(off))
    csr: kernels.Csr = kernels.coo_to_csr(
        task.images, np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    )
    return csr


class LayerTimeout(ChannelTimeout):
    """A layer's activations did not all come: ``missing`` peers did not send layer ``layer``."""

    def __init__(self, message: str, missing: list[int], layer: int) -> None:
        super().__init__(message, missing)
        self.layer = layer


def failure_report(task: WorkerTask, exc: BaseException) -> wire.Message:
    """The RESULT a failed worker sends: ``FLAG_ERROR``, its reason as text, and, when it gave
    up waiting for peers' activations (:class:`LayerTimeout`), a second array: the layer, then
    the peers it waited for, so that the coordinator can name the worker that stalled."""
    detail = f"{type(exc).__name__}: {exc}"
    arrays = [np.frombuffer(detail.encode(), np.uint8)]
    if isinstance(exc, LayerTimeout) and all(0 <= m < task.workers for m in exc.missing):
        arrays.append(np.array([exc.layer, *exc.missing], np.uint32))
    header = wire.Header(
        wire.Kind.RESULT, task.run, 0, task.worker, COORDINATOR, flags=wire.FLAG_ERROR
    )
    return wire.Message(header, arrays)


def run_worker(
    task: WorkerTask, channel: Channel, on_layer: Callable[[int], None] | None = None
) -> None:
    """Run every layer and report to the coordinator; failures are reported, then re-raised.

    The failure is the caller's to tell (the coordinator names it, a function answers it): here
    it is one INFO line, its traceback at DEBUG, so a failed run is not told once per worker.
    """
    me = task.worker
    try:
        _run(task, channel, on_layer)
    except RunAborted:
        log.info("worker %d stops: the coordinator aborted run %s", me, task.run.hex())
        raise
    except Exception as exc:
        log.info("worker %d failed: %s: %s", me, type(exc).__name__, exc)
        log.debug("worker %d: where it failed", me, exc_info=True)
        try:
            channel.send(failure_report(task, exc))
        except Exception as report:  # the channel itself may be what failed
            log.info("worker %d could not report its failure: %s", me, report)
        raise


def _feed(task: WorkerTask) -> LayerFeed | ShardFeed:
    if task.shard is not None:
        return ShardFeed(task.shard)
    if task.layers is None:
        raise FsdError("worker started without its shard")
    return LayerFeed(task.layers, task.window)


def _run(task: WorkerTask, channel: Channel, on_layer: Callable[[int], None] | None) -> None:
    _check_task(task)
    feed = _feed(task)
    try:
        y, stats = _layers(task, channel, on_layer, feed)
    finally:
        feed.close()
    _result(task, channel, y, stats)


@dataclass
class _Stats:
    compute: np.ndarray
    comm: np.ndarray
    sent_bytes: np.ndarray
    sent_msgs: np.ndarray
    started: float


def _layers(
    task: WorkerTask,
    channel: Channel,
    on_layer: Callable[[int], None] | None,
    feed: LayerFeed | ShardFeed,
) -> tuple[kernels.Csr, _Stats]:
    """Every layer, taken from ``feed`` one at a time and dropped once computed."""
    me, run = task.worker, task.run
    started = time.perf_counter()
    dtype = np.dtype(task.dtype)
    depth = feed.depth
    compute = np.zeros(depth)
    comm = np.zeros(depth)
    sent_bytes = np.zeros(depth, np.int64)
    sent_msgs = np.zeros(depth, np.int64)
    first = channel.expect(wire.Kind.INPUT, 0, [COORDINATOR], task.wait())
    y = _input_matrix(task, first[COORDINATOR])
    empty = kernels.empty_csr(task.images, dtype)

    def send_for(k: int, acts: kernels.Csr, sends: Sends) -> None:
        """Send layer k's peers the activations they need from ``acts`` (timed as comm)."""
        t = time.perf_counter()
        for dst, selmap, wanted in sends:
            if not 0 <= dst < task.workers:
                raise InputError(f"layer {k} of the shard names a worker outside the run")
            header = wire.Header(wire.Kind.ACT, run, k + 1, me, dst)
            sent_bytes[k] += channel.send(wire.Message(header, _activations(acts, selmap, wanted)))
            sent_msgs[k] += 1
        comm[k] += time.perf_counter() - t

    send_for(0, y, feed.first)
    for k in range(depth):
        t_get = time.perf_counter()
        layer, after = feed.get(k, task.layer_timeout)
        comm[k] += time.perf_counter() - t_get  # waiting for weights is not computing
        if task.shard is None:
            _check_layer(task, k, layer)
        t0 = time.perf_counter()
        if layer.sources:
            zs = [kernels.partial_product(*y, *part.w_local, part.width) for part in layer.parts]
            t1 = time.perf_counter()
            try:
                got = channel.expect(wire.Kind.ACT, k + 1, layer.sources, task.wait())
            except ChannelTimeout as exc:
                raise LayerTimeout(str(exc), exc.missing, k + 1) from None
            t2 = time.perf_counter()
            x = _assemble(task, got, layer)
            comm[k] += t2 - t1
            compute[k] += (t1 - t0) + (time.perf_counter() - t2)
        outs = []
        sent_next = k + 1 == depth
        for i, part in enumerate(layer.parts):
            t3 = time.perf_counter()
            if layer.sources:
                out = kernels.finish_layer(
                    *zs[i], *x, *part.w_remote, part.width, task.bias, task.ymax
                )
            else:
                out = kernels.finish_layer(
                    *empty, *y, *part.w_local, part.width, task.bias, task.ymax
                )
            compute[k] += time.perf_counter() - t3
            outs.append(out)
            if i == 0 and layer.n_boundary and not sent_next:
                # the boundary block is done: ship it, then compute the interior meanwhile
                send_for(k + 1, out, after)
                sent_next = True
        t4 = time.perf_counter()
        y = outs[0] if len(outs) == 1 else kernels.hstack(*outs[0], *outs[1], layer.parts[0].width)
        compute[k] += time.perf_counter() - t4
        if not sent_next:
            send_for(k + 1, y, after)
        del layer, part  # no reference left: the feed may fetch into this slot now
        feed.release()
        if on_layer is not None:
            on_layer(k + 1)
    return y, _Stats(compute, comm, sent_bytes, sent_msgs, started)


def result_rows(y: kernels.Csr) -> tuple[np.ndarray, np.ndarray]:
    """The images still alive (row ids, uint32) and their activation sums (float64): what a
    worker reports of its final layer."""
    indptr, _, values = y
    counts = np.diff(indptr)
    alive = np.flatnonzero(counts).astype(np.uint32)
    if not len(alive):
        return alive, np.empty(0)
    return alive, np.add.reduceat(values.astype(np.float64), indptr[:-1][counts > 0])


def _result(task: WorkerTask, channel: Channel, y: kernels.Csr, stats: _Stats) -> None:
    """The RESULT message: surviving rows, their sums, per-layer timings and traffic."""
    me, run = task.worker, task.run
    compute, comm, sent_bytes, sent_msgs = (
        stats.compute, stats.comm, stats.sent_bytes, stats.sent_msgs
    )  # fmt: skip
    alive, sums = result_rows(y)
    # counted operations by name ("\n"-separated), so the coordinator needs no fixed order
    names = np.frombuffer("\n".join(channel.stats.ops).encode("ascii"), np.uint8)
    counts = np.array(list(channel.stats.ops.values()), np.int64)
    peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB
    wall = np.array([time.perf_counter() - stats.started, peak])
    rejected = np.array([channel.stats.rejected], np.int64)
    header = wire.Header(wire.Kind.RESULT, run, 0, me, COORDINATOR)
    arrays = [alive, sums, compute, comm, sent_bytes, sent_msgs, names, counts, wall, rejected]
    channel.send(wire.Message(header, arrays))
