"""Compiled sparse kernels of the engine (numba): fused layer, partial product, gather, COO->CSR.

CSR is passed as three arrays (indptr int64, indices int32, values float32/64). Column order within
a row is not kept sorted: nothing downstream needs it, and skipping the sort saves a pass per layer.

The kernels do no bounds checks (that is where their speed comes from): an index out of range is
a write out of bounds, not an exception. Every array from outside is therefore checked before it
gets here: received frames by :mod:`fsd.worker` (``_input_matrix``, ``_assemble``), shards by
:func:`fsd.shard.check_shard`. What they rely on: indptr rises from 0 to nnz with one entry per row
plus one; indices lie in [0, ncols) and fit int32; a weight matrix has one row per input column of
the activations it multiplies and its transposed copy the swapped shape; ``selmap`` has one entry
per input column, values in [-1, wanted), each position hit once (so positions fit the u16/u32
``pos_like``); coo_to_csr's rows lie in [0, nrows) and its cols in [0, ncols).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from numba import njit

log = logging.getLogger(__name__)

Csr = tuple[np.ndarray, np.ndarray, np.ndarray]
# A layer's weights twice: by rows (for the sparse scatter) and by columns (for the dense block).
Weights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]

DENSE = 4  # a row takes the blocked path when at least 1/DENSE of its inputs are non-zero


@njit(cache=True, nogil=True)
def _grow(idx: Any, val: Any, used: int, need: int) -> Any:
    cap = max(2 * len(idx), used + need, 16)
    idx2 = np.empty(cap, np.int32)
    val2 = np.empty(cap, val.dtype)
    idx2[:used] = idx[:used]
    val2[:used] = val[:used]
    return idx2, val2


@njit(cache=True, nogil=True)
def _dense_rows(xp: Any, kin: int) -> Any:
    """Rows dense enough for the blocked product (a non-zero in at least 1/DENSE of the inputs)."""
    nrows = len(xp) - 1
    slot = np.full(nrows, -1, np.int64)
    count = 0
    for r in range(nrows):
        n = xp[r + 1] - xp[r]
        if n > 0 and n * DENSE >= kin:
            slot[r] = count
            count += 1
    rows = np.empty(count, np.int64)
    for r in range(nrows):
        if slot[r] >= 0:
            rows[slot[r]] = r
    return slot, rows


@njit(cache=True, nogil=True)
def _block_product(
    rows: Any, xp: Any, xi: Any, xx: Any, kin: int, tp: Any, ti: Any, tx: Any
) -> Any:
    """(X[rows] @ W) as a dense block ``out[j, q]``: output column j of the q-th chosen row.

    Walking W by columns (``tp, ti, tx`` is W transposed) turns each multiply into a SAXPY over
    contiguous rows, which LLVM vectorises; the row-wise scatter of the sparse path cannot be.
    """
    nr = len(rows)
    block = np.zeros((kin, nr), xx.dtype)
    for q in range(nr):
        r = rows[q]
        for a in range(xp[r], xp[r + 1]):
            block[xi[a], q] = xx[a]
    out = np.zeros((len(tp) - 1, nr), xx.dtype)
    if nr == 0:
        return out
    for j in range(len(tp) - 1):
        o = out[j]
        for b in range(tp[j], tp[j + 1]):
            d = block[ti[b]]
            w = tx[b]
            for q in range(nr):
                o[q] += w * d[q]
    return out


@njit(cache=True, nogil=True)
def partial_product(
    yp: Any, yi: Any, yx: Any,
    wp: Any, wi: Any, wx: Any, tp: Any, ti: Any, tx: Any,
    ncols: int,
) -> Any:  # fmt: skip
    """Z = Y @ W without bias or cap; every touched entry kept (the layer is finished later)."""
    nrows = len(yp) - 1
    slot, dense = _dense_rows(yp, len(wp) - 1)
    block = _block_product(dense, yp, yi, yx, len(wp) - 1, tp, ti, tx)
    acc = np.zeros(ncols, yx.dtype)
    mark = np.full(ncols, -1, np.int64)
    touched = np.empty(ncols, np.int64)
    zp = np.zeros(nrows + 1, np.int64)
    zi = np.empty(max(16, len(yx)), np.int32)
    zx = np.empty(max(16, len(yx)), yx.dtype)
    nnz = 0
    for r in range(nrows):
        q = slot[r]
        if q >= 0:
            if nnz + ncols > len(zi):
                zi, zx = _grow(zi, zx, nnz, ncols)
            for j in range(ncols):
                v = block[j, q]
                if v != 0:
                    zi[nnz] = j
                    zx[nnz] = v
                    nnz += 1
            zp[r + 1] = nnz
            continue
        nt = 0
        for a in range(yp[r], yp[r + 1]):
            k = yi[a]
            v = yx[a]
            for b in range(wp[k], wp[k + 1]):
                j = wi[b]
                if mark[j] != r:
                    mark[j] = r
                    acc[j] = 0
                    touched[nt] = j
                    nt += 1
                acc[j] += v * wx[b]
        if nnz + nt > len(zi):
            zi, zx = _grow(zi, zx, nnz, nt)
        for t in range(nt):
            j = touched[t]
            zi[nnz] = j
            zx[nnz] = acc[j]
            nnz += 1
        zp[r + 1] = nnz
    return zp, zi[:nnz], zx[:nnz]


@njit(cache=True, nogil=True, inline="always")
def _emit(j: int, z: Any, bias: Any, cap: Any, oi: Any, ox: Any, nnz: int) -> int:
    """The challenge rule for one entry: bias only where Z != 0, ReLU, cap; keep non-zeros."""
    if z != 0:
        y = min(z + bias, cap)
        if y > 0:
            oi[nnz] = j
            ox[nnz] = y
            return nnz + 1
    return nnz


@njit(cache=True, nogil=True)
def finish_layer(
    zp: Any, zi: Any, zx: Any,
    xp: Any, xi: Any, xx: Any,
    wp: Any, wi: Any, wx: Any, tp: Any, ti: Any, tx: Any,
    ncols: int, bias: float, ymax: float,
) -> Any:  # fmt: skip
    """Y' = clip(Z + X @ W + bias where non-zero, 0, ymax), fused in one pass over the rows.

    ``Z`` is the partial product already computed from local activations (may be empty) and ``X``
    holds the activations received from other workers (or the local ones when nothing is remote).
    Rows of X dense enough go through the blocked product first; the rest are scattered row by row.
    """
    nrows = len(xp) - 1
    slot, dense = _dense_rows(xp, len(wp) - 1)
    block = _block_product(dense, xp, xi, xx, len(wp) - 1, tp, ti, tx)
    acc = np.zeros(ncols, xx.dtype)
    mark = np.full(ncols, -1, np.int64)
    touched = np.empty(ncols, np.int64)
    op = np.zeros(nrows + 1, np.int64)
    guess = max(16, len(xx) + len(zx))
    oi = np.empty(guess, np.int32)
    ox = np.empty(guess, xx.dtype)
    b_ = xx.dtype.type(bias)
    cap = xx.dtype.type(ymax)
    nnz = 0
    for r in range(nrows):
        q = slot[r]
        if q >= 0:
            for a in range(zp[r], zp[r + 1]):
                block[zi[a], q] += zx[a]
            if nnz + ncols > len(oi):
                oi, ox = _grow(oi, ox, nnz, ncols)
            for j in range(ncols):
                nnz = _emit(j, block[j, q], b_, cap, oi, ox, nnz)
            op[r + 1] = nnz
            continue
        work = zp[r + 1] - zp[r]
        for a in range(xp[r], xp[r + 1]):
            work += wp[xi[a] + 1] - wp[xi[a]]
        if work == 0:
            op[r + 1] = nnz
            continue
        if work >= ncols:  # dense row: accumulate without bookkeeping, then scan every column
            acc[:] = 0
            for a in range(zp[r], zp[r + 1]):
                acc[zi[a]] += zx[a]
            for a in range(xp[r], xp[r + 1]):
                v = xx[a]
                for b in range(wp[xi[a]], wp[xi[a] + 1]):
                    acc[wi[b]] += v * wx[b]
            if nnz + ncols > len(oi):
                oi, ox = _grow(oi, ox, nnz, ncols)
            for j in range(ncols):
                nnz = _emit(j, acc[j], b_, cap, oi, ox, nnz)
            op[r + 1] = nnz
            continue
        nt = 0
        for a in range(zp[r], zp[r + 1]):
            j = zi[a]
            if mark[j] != r:
                mark[j] = r
                acc[j] = 0
                touched[nt] = j
                nt += 1
            acc[j] += zx[a]
        for a in range(xp[r], xp[r + 1]):
            k = xi[a]
            v = xx[a]
            for b in range(wp[k], wp[k + 1]):
                j = wi[b]
                if mark[j] != r:
                    mark[j] = r
                    acc[j] = 0
                    touched[nt] = j
                    nt += 1
                acc[j] += v * wx[b]
        if nnz + nt > len(oi):
            oi, ox = _grow(oi, ox, nnz, nt)
        for t in range(nt):
            j = touched[t]
            nnz = _emit(j, acc[j], b_, cap, oi, ox, nnz)
        op[r + 1] = nnz
    return op, oi[:nnz], ox[:nnz]


@njit(cache=True, nogil=True)
def gather_columns(yp: Any, yi: Any, yx: Any, selmap: Any, pos_like: Any) -> Any:
    """Non-zeros of Y in the columns a peer needs, row-compressed for the wire.

    Returns (rows with any, their counts, position in the peer's list, value); positions take the
    dtype of ``pos_like`` (u16 when the peer's list is short: 6 bytes per activation, not 12).
    """
    nrows = len(yp) - 1
    count = 0
    busy = 0
    for r in range(nrows):
        before = count
        for a in range(yp[r], yp[r + 1]):
            if selmap[yi[a]] >= 0:
                count += 1
        if count > before:
            busy += 1
    rows = np.empty(busy, np.uint32)
    counts = np.empty(busy, np.uint32)
    pos = np.empty(count, pos_like.dtype)
    vals = np.empty(count, yx.dtype)
    n = 0
    q = 0
    for r in range(nrows):
        before = n
        for a in range(yp[r], yp[r + 1]):
            s = selmap[yi[a]]
            if s >= 0:
                pos[n] = s
                vals[n] = yx[a]
                n += 1
        if n > before:
            rows[q] = r
            counts[q] = n - before
            q += 1
    return rows, counts, pos, vals


@njit(cache=True, nogil=True)
def coo_to_csr(nrows: int, rows: Any, cols: Any, vals: Any) -> Any:
    """Stable counting sort of triplets by row (no duplicates: one sender per column)."""
    indptr = np.zeros(nrows + 1, np.int64)
    for a in range(len(rows)):
        indptr[rows[a] + 1] += 1
    for r in range(nrows):
        indptr[r + 1] += indptr[r]
    fill = indptr[:-1].copy()
    idx = np.empty(len(rows), np.int32)
    val = np.empty(len(rows), vals.dtype)
    for a in range(len(rows)):
        r = rows[a]
        d = fill[r]
        idx[d] = cols[a]
        val[d] = vals[a]
        fill[r] = d + 1
    return indptr, idx, val


@njit(cache=True, nogil=True)
def hstack(ap: Any, ai: Any, ax: Any, bp: Any, bi: Any, bx: Any, offset: int) -> Any:
    """[A | B] row by row, B's columns shifted by ``offset`` (the width of A)."""
    nrows = len(ap) - 1
    op = np.empty(nrows + 1, np.int64)
    oi = np.empty(len(ai) + len(bi), np.int32)
    ox = np.empty(len(ax) + len(bx), ax.dtype)
    op[0] = 0
    n = 0
    for r in range(nrows):
        for a in range(ap[r], ap[r + 1]):
            oi[n] = ai[a]
            ox[n] = ax[a]
            n += 1
        for b in range(bp[r], bp[r + 1]):
            oi[n] = bi[b] + offset
            ox[n] = bx[b]
            n += 1
        op[r + 1] = n
    return op, oi, ox


def empty_csr(nrows: int, dtype: np.dtype[Any]) -> Csr:
    return np.zeros(nrows + 1, np.int64), np.empty(0, np.int32), np.empty(0, dtype)


def warm_up(dtype: np.dtype[Any] | type | str = np.float32) -> None:
    """Compile (or load from numba's cache) every kernel for ``dtype`` before workers fork."""
    dt = np.dtype(dtype)
    p = np.array([0, 1], np.int64)
    i = np.array([0], np.int32)
    x = np.array([1.0], dt)
    z = partial_product(p, i, x, p, i, x, p, i, x, 1)
    finish_layer(*z, p, i, x, p, i, x, p, i, x, 1, -0.3, 32.0)
    for like in (np.empty(0, np.uint16), np.empty(0, np.uint32)):
        gather_columns(p, i, x, np.array([0], np.int32), like)
    coo_to_csr(1, np.array([0], np.uint32), np.array([0], np.uint32), x)
    hstack(p, i, x, p, i, x, 1)
    log.debug("kernels ready for %s", dt)
