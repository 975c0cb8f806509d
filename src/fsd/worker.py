"""The worker: one shard, one layer loop, talking only through its Channel.

Per layer: send each peer the non-zero activations it needs (an empty message when there are
none, so no receiver ever waits on a silent sender), multiply what is local while those messages
travel, then fold in what arrived and finish the layer (bias on non-zeros, ReLU, cap).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable

import numpy as np

from fsd import kernels, wire
from fsd.channels.base import COORDINATOR, OPS, Channel
from fsd.errors import FsdError, RunAborted, WireError
from fsd.shard import LayerShard
from fsd.task import WorkerTask

log = logging.getLogger(__name__)


def _check_coo(what: str, rows: np.ndarray, cols: np.ndarray, nrows: int, ncols: int) -> None:
    """Indices from another endpoint are checked before a kernel (no bounds checks) sees them."""
    if len(rows) and int(rows.max()) >= nrows:
        raise WireError(f"{what}: row {int(rows.max())} out of range ({nrows} images)")
    if len(cols) and int(cols.max()) >= ncols:
        raise WireError(f"{what}: column {int(cols.max())} out of range ({ncols})")


def _input_matrix(task: WorkerTask, msg: wire.Message) -> kernels.Csr:
    if len(msg.arrays) != 3 or len({len(a) for a in msg.arrays}) != 1:
        raise WireError("INPUT must carry three arrays of equal length")
    rows, cols, vals = msg.arrays
    width = len(task.shard.inputs) if task.shard is not None else 0
    _check_coo("INPUT", rows, cols, task.images, width)
    csr: kernels.Csr = kernels.coo_to_csr(
        task.images, rows, cols, vals.astype(task.dtype, copy=False)
    )
    return csr


_U16 = np.empty(0, np.uint16)
_U32 = np.empty(0, np.uint32)


def _activations(y: kernels.Csr, selmap: np.ndarray, wanted: int) -> list[np.ndarray]:
    """An ACT message's arrays: rows with any, their counts, positions, values (see gather)."""
    like = _U16 if wanted <= 1 << 16 else _U32
    return list(kernels.gather_columns(*y, selmap, like))


def _assemble(task: WorkerTask, got: dict[int, wire.Message], layer: LayerShard) -> kernels.Csr:
    """Stack the received activations into one CSR over the remote columns, sources in order."""
    rows, cols, vals = [], [], []
    ends = [*layer.offsets[1:], layer.n_remote]
    for src, off, end in zip(layer.sources, layer.offsets, ends, strict=True):
        arrays = got[src].arrays
        if len(arrays) != 4:
            raise WireError(f"ACT from {src} has {len(arrays)} arrays, expected 4")
        r, n, c, v = arrays
        if len(r) != len(n) or len(c) != len(v) or int(n.sum()) != len(c):
            raise WireError(f"ACT from {src} has inconsistent array lengths")
        _check_coo(f"ACT from {src}", r, c, task.images, end - off)
        rows.append(np.repeat(r, n))
        cols.append(c.astype(np.uint32) + np.uint32(off))
        vals.append(v)
    csr: kernels.Csr = kernels.coo_to_csr(
        task.images,
        np.concatenate(rows),
        np.concatenate(cols),
        np.concatenate(vals).astype(task.dtype, copy=False),
    )
    return csr


def run_worker(
    task: WorkerTask, channel: Channel, on_layer: Callable[[int], None] | None = None
) -> None:
    """Run every layer and report to the coordinator; failures are reported, then re-raised."""
    me = task.worker
    try:
        _run(task, channel, on_layer)
    except RunAborted:
        log.info("worker %d stops: the coordinator aborted run %s", me, task.run.hex())
        raise
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        log.error("worker %d failed: %s\n%s", me, detail, traceback.format_exc())
        header = wire.Header(wire.Kind.RESULT, task.run, 0, me, COORDINATOR, flags=wire.FLAG_ERROR)
        try:
            channel.send(wire.Message(header, [np.frombuffer(detail.encode(), np.uint8)]))
        except Exception as report:  # the channel itself may be what failed
            log.error("worker %d could not report its failure: %s", me, report)
        raise


def _run(task: WorkerTask, channel: Channel, on_layer: Callable[[int], None] | None) -> None:
    if task.shard is None:
        raise FsdError("worker started without its shard")
    me, run = task.worker, task.run
    started = time.perf_counter()
    dtype = np.dtype(task.dtype)
    depth = len(task.shard.layers)
    compute = np.zeros(depth)
    comm = np.zeros(depth)
    sent_bytes = np.zeros(depth, np.int64)
    sent_msgs = np.zeros(depth, np.int64)
    first = channel.expect(wire.Kind.INPUT, 0, [COORDINATOR], task.layer_timeout)
    y = _input_matrix(task, first[COORDINATOR])
    empty = kernels.empty_csr(task.images, dtype)
    layers = task.shard.layers

    def send_for(k: int, acts: kernels.Csr) -> None:
        """Send layer k's peers the activations they need from ``acts`` (timed as comm)."""
        t = time.perf_counter()
        for dst, selmap, wanted in layers[k].sends:
            header = wire.Header(wire.Kind.ACT, run, k + 1, me, dst)
            sent_bytes[k] += channel.send(wire.Message(header, _activations(acts, selmap, wanted)))
            sent_msgs[k] += 1
        comm[k] += time.perf_counter() - t

    send_for(0, y)
    for k, layer in enumerate(layers):
        t0 = time.perf_counter()
        if layer.sources:
            zs = [kernels.partial_product(*y, *part.w_local, part.width) for part in layer.parts]
            t1 = time.perf_counter()
            got = channel.expect(wire.Kind.ACT, k + 1, layer.sources, task.layer_timeout)
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
                send_for(k + 1, out)
                sent_next = True
        t4 = time.perf_counter()
        y = outs[0] if len(outs) == 1 else kernels.hstack(*outs[0], *outs[1], layer.parts[0].width)
        compute[k] += time.perf_counter() - t4
        if not sent_next:
            send_for(k + 1, y)
        if on_layer is not None:
            on_layer(k + 1)
    indptr, _, values = y
    counts = np.diff(indptr)
    alive = np.flatnonzero(counts).astype(np.uint32)
    sums = (
        np.add.reduceat(values.astype(np.float64), indptr[:-1][counts > 0])
        if len(alive)
        else (np.empty(0))
    )
    ops = np.array([channel.stats.ops[op] for op in OPS], np.int64)
    wall = np.array([time.perf_counter() - started])
    rejected = np.array([channel.stats.rejected], np.int64)
    header = wire.Header(wire.Kind.RESULT, run, 0, me, COORDINATOR)
    arrays = [alive, sums, compute, comm, sent_bytes, sent_msgs, ops, wall, rejected]
    channel.send(wire.Message(header, arrays))
