"""What one worker holds: its slice of every layer, re-indexed to local positions, and its sends.

Built once from the network and the plan (by the coordinator, or ahead of time by a model store);
a worker never sees weights or activations it does not need.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import untrusted
from fsd.errors import InputError
from fsd.kernels import Csr, Weights
from fsd.model.network import Network
from fsd.partition import LayerSource, Plan, as_layers


def _csr_arrays(m: sp.csr_matrix | sp.csc_matrix, dtype: np.dtype[np.floating]) -> Csr:
    m = sp.csr_matrix(m)
    return m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(dtype)


def _weights(m: sp.csr_matrix, dtype: np.dtype[np.floating]) -> Weights:
    """By rows for the sparse scatter and by columns for the dense block (see fsd.kernels)."""
    return (*_csr_arrays(m, dtype), *_csr_arrays(m.transpose(), dtype))


Sends = list[tuple[int, np.ndarray, int]]
"""(dst, selmap: local input position -> index in dst's list or -1, length of dst's list)"""


@dataclass
class Part:
    """A block of a layer's output columns, with the weights that produce it."""

    width: int
    w_local: Weights  # rows: this worker's inputs (local positions)
    w_remote: Weights  # rows: received activations, sources stacked in order


@dataclass
class LayerShard:
    """One worker's part of one layer.

    Output columns are ordered boundary first: the first ``n_boundary`` are the neurons some peer
    needs at the next layer. The worker finishes that block first and sends it, then computes the
    interior while those messages travel (``parts`` holds the blocks, boundary first).
    """

    n_out: int
    n_boundary: int
    parts: list[Part]
    # (dst, selmap: local input position -> index in dst's list or -1, length of dst's list)
    sends: list[tuple[int, np.ndarray, int]]
    sources: list[int]  # workers that send to this one, ascending
    offsets: list[int]  # column offset of each source's activations in the received block

    @property
    def n_remote(self) -> int:
        """Width of the received block (all sources stacked)."""
        return len(self.parts[0].w_remote[0]) - 1 if self.parts else 0


@dataclass
class Shard:
    worker: int
    inputs: np.ndarray  # global ids of level-0 neurons this worker owns (its input columns)
    layers: list[LayerShard]

    @property
    def nbytes(self) -> int:
        total = self.inputs.nbytes
        for layer in self.layers:
            for part in layer.parts:
                total += sum(a.nbytes for a in part.w_local) + sum(a.nbytes for a in part.w_remote)
            total += sum(sel.nbytes for _, sel, _ in layer.sends)
        return total


def _boundary_first(plan: Plan, level: int) -> tuple[list[np.ndarray], list[int]]:
    """Each worker's neurons of ``level``, those a peer needs next put first; how many they are."""
    owners, workers = plan.owners[level], plan.workers
    owned = [np.flatnonzero(owners == p) for p in range(workers)]
    n_boundary = [0] * workers
    if not 1 <= level < plan.depth:  # level 0 keeps its order (the coordinator splits it)
        return owned, n_boundary
    pairs = plan.layers[level].pairs
    for p in range(workers):
        needed = [ids for (s, _), ids in pairs.items() if s == p]
        if not needed:
            continue
        mask = np.isin(owned[p], np.concatenate(needed))
        owned[p] = np.concatenate([owned[p][mask], owned[p][~mask]])
        n_boundary[p] = int(mask.sum())
    return owned, n_boundary


class ShardCutter:
    """Cuts one layer at a time into every worker's part, following ``plan``.

    Holds only the plan and the per-level orders of the few levels in use (no weights): a
    1920-layer plan's orders for every level would take a gigabyte. :meth:`cut` needs that
    layer alone.
    """

    KEPT = 3  # levels whose orders are kept: k and k+1 of the layer being cut, and one spare

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._levels: dict[int, tuple[list[np.ndarray], list[int]]] = {}

    def _level(self, level: int) -> tuple[list[np.ndarray], list[int]]:
        found = self._levels.get(level)
        if found is None:
            if len(self._levels) >= self.KEPT:
                del self._levels[max(self._levels, key=lambda k: abs(k - level))]
            found = self._levels[level] = _boundary_first(self.plan, level)
        return found

    def inputs(self, worker: int) -> np.ndarray:
        """Global ids of the level-0 neurons ``worker`` owns (its input columns)."""
        return self._level(0)[0][worker]

    def sends(self, k: int) -> list[Sends]:
        """Each worker's sends before layer ``k`` (0-based): which of its level-k neurons each
        peer needs. Depends on the plan only, so a store can file them with layer k-1."""
        local_pos = self._local_pos(k)
        return [self._sends_of(k, p, local_pos) for p in range(self.plan.workers)]

    def sends_of(self, k: int, worker: int) -> Sends:
        """``sends(k)[worker]`` alone."""
        return self._sends_of(k, worker, self._local_pos(k))

    def _local_pos(self, k: int) -> np.ndarray:
        """Position of each global neuron within its owner's input list at level ``k``."""
        owned = self._level(k)[0]
        local_pos = np.empty(self.plan.neurons, np.int64)
        for p in range(self.plan.workers):
            local_pos[owned[p]] = np.arange(len(owned[p]))
        return local_pos

    def _sends_of(self, k: int, p: int, local_pos: np.ndarray) -> Sends:
        transfers = self.plan.layers[k].pairs
        sends = []
        for d in range(self.plan.workers):
            needed = transfers.get((p, d))
            if needed is None:
                continue
            selmap = np.full(len(self._level(k)[0][p]), -1, np.int32)
            selmap[local_pos[needed]] = np.arange(len(needed), dtype=np.int32)
            sends.append((d, selmap, len(needed)))
        return sends

    def cut(self, k: int, w: sp.csr_matrix, dtype: np.dtype[np.floating]) -> list[LayerShard]:
        """Layer ``k`` (0-based; ``w`` its weights) as one LayerShard per worker."""
        return [self._cut_for(k, w, dtype, p, sends) for p, sends in enumerate(self.sends(k))]

    def cut_one(
        self, k: int, w: sp.csr_matrix, dtype: np.dtype[np.floating], worker: int
    ) -> LayerShard:
        """Worker ``worker``'s LayerShard of layer ``k`` alone (``cut(...)[worker]``)."""
        return self._cut_for(k, w, dtype, worker, self.sends_of(k, worker))

    def _cut_for(
        self, k: int, w: sp.csr_matrix, dtype: np.dtype[np.floating], p: int, sends: Sends
    ) -> LayerShard:
        plan = self.plan
        transfers = plan.layers[k].pairs
        ins = self._level(k)[0][p]
        owned_next, n_boundary = self._level(k + 1)
        outs = owned_next[p]
        sources = sorted(s for (s, d) in transfers if d == p)
        blocks = [transfers[(s, p)] for s in sources]
        offsets = list(np.cumsum([0] + [len(b) for b in blocks[:-1]])) if blocks else []
        remote_rows = np.concatenate(blocks) if blocks else np.empty(0, np.int64)
        nb = n_boundary[p]
        cuts = [c for c in (outs[:nb], outs[nb:]) if len(c)] or [outs]
        parts = []
        for cut in cuts:
            cols = w[:, cut]
            local, remote = _weights(cols[ins], dtype), _weights(cols[remote_rows], dtype)
            parts.append(Part(len(cut), local, remote))
        return LayerShard(
            n_out=len(outs),
            n_boundary=nb,
            parts=parts,
            sends=sends,
            sources=sources,
            offsets=[int(o) for o in offsets],
        )


class CutLayers:
    """One worker's layers cut straight from the model's source as the worker asks for them (a
    :class:`fsd.task.LayerSupply`): nothing is copied to a store first.

    Worth it where cutting is cheap next to computing, as with a single partition (the whole
    layer is the worker's): a 65536x1920 net (33 GB) then needs no second copy on disk. Every
    worker reads the whole layer, so with P partitions the reading is done P times.
    """

    def __init__(
        self, source: LayerSource, cutter: ShardCutter, worker: int, dtype: np.dtype[np.floating]
    ) -> None:
        if source.depth != cutter.plan.depth or source.neurons != cutter.plan.neurons:
            raise InputError(
                f"the plan is for {cutter.plan.depth} layers of {cutter.plan.neurons} neurons, "
                f"the network has {source.depth} of {source.neurons}"
            )
        self.source, self.cutter, self.worker, self.dtype = source, cutter, worker, dtype
        self.inputs = cutter.inputs(worker)
        self.depth = source.depth
        self.first = cutter.sends_of(0, worker)

    def layer(self, k: int) -> tuple[LayerShard, Sends]:
        """Layer ``k`` (0-based) and the sends of layer k+1 (none after the last)."""
        shard = self.cutter.cut_one(k, self.source.layer(k + 1), self.dtype, self.worker)
        return shard, self.cutter.sends_of(k + 1, self.worker) if k + 1 < self.depth else []


def iter_layer_shards(
    source: Network | LayerSource, plan: Plan, dtype: np.dtype[np.floating]
) -> Iterator[tuple[int, list[LayerShard]]]:
    """``(k, [worker p's LayerShard of layer k for each p])`` for k = 0, 1, ... in order.

    Reads each layer of ``source`` once, when its turn comes: the caller holds one layer's
    weights and its cut, never the network (store them, send them, then drop them).
    """
    return _cuts(source, ShardCutter(plan), dtype)


def _cuts(
    source: Network | LayerSource, cutter: ShardCutter, dtype: np.dtype[np.floating]
) -> Iterator[tuple[int, list[LayerShard]]]:
    layers, plan = as_layers(source), cutter.plan
    if layers.depth != plan.depth or layers.neurons != plan.neurons:
        raise InputError(
            f"the plan is for {plan.depth} layers of {plan.neurons} neurons, "
            f"the network has {layers.depth} of {layers.neurons}"
        )
    for k in range(plan.depth):
        yield k, cutter.cut(k, layers.layer(k + 1), dtype)


def build_shards(
    source: Network | LayerSource, plan: Plan, dtype: np.dtype[np.floating]
) -> list[Shard]:
    """Cut the network into one whole shard per worker following ``plan`` (all layers held)."""
    cutter = ShardCutter(plan)
    shards = [Shard(p, cutter.inputs(p), []) for p in range(plan.workers)]
    for _, cut in _cuts(source, cutter, dtype):
        for shard, layer in zip(shards, cut, strict=True):
            shard.layers.append(layer)
    return shards


def shard_to_bytes(shard: Shard) -> bytes:
    """A shard as one npz file (arrays only, plus a JSON description): nothing to unpickle."""
    arrays: dict[str, np.ndarray] = {"inputs": shard.inputs}
    layers = []
    for k, layer in enumerate(shard.layers):
        for i, (_, selmap, _) in enumerate(layer.sends):
            arrays[f"{k}.send{i}"] = selmap
        for j, part in enumerate(layer.parts):
            for n, a in enumerate(part.w_local):
                arrays[f"{k}.{j}.local{n}"] = a
            for n, a in enumerate(part.w_remote):
                arrays[f"{k}.{j}.remote{n}"] = a
        layers.append(
            {
                "n_out": layer.n_out,
                "n_boundary": layer.n_boundary,
                "widths": [p.width for p in layer.parts],
                "sends": [[dst, wanted] for dst, _, wanted in layer.sends],
                "sources": layer.sources,
                "offsets": layer.offsets,
            }
        )
    meta = json.dumps({"worker": shard.worker, "layers": layers}).encode()
    arrays["meta"] = np.frombuffer(meta, np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


_INT32 = np.dtype(np.int32)
_INT64 = np.dtype(np.int64)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_SHARD_DTYPES = (_INT64, _INT32, *_FLOATS, np.dtype(np.uint8))
MAX_WIDTH = (1 << 31) - 1
"""Widest layer a shard may describe: every kernel holds column indices as int32."""
MAX_WORKERS = 1 << 20
"""Most workers a shard may name as a peer when the caller does not say how many there are."""


def _names(layers: list[dict[str, Any]]) -> set[str]:
    """The npz members a shard with these layers must have, and nothing else."""
    names = {"inputs"}
    for k, m in enumerate(layers):
        names.update(f"{k}.send{i}" for i in range(len(m["sends"])))
        for j in range(len(m["widths"])):
            names.update(f"{k}.{j}.{side}{n}" for side in ("local", "remote") for n in range(6))
    return names


def _int_list(value: object, what: str, lo: int, hi: int) -> list[int]:
    if not isinstance(value, list):
        raise InputError(f"{what} must be a list, got {type(value).__name__}")
    return [untrusted.json_int(v, f"{what}[{i}]", lo, hi) for i, v in enumerate(value)]


def _layer_meta(m: object, where: str) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise InputError(f"{where} must be an object")
    sends = m.get("sends")
    if not isinstance(sends, list) or not all(isinstance(s, list) and len(s) == 2 for s in sends):
        raise InputError(f"{where}.sends must be a list of [dst, wanted] pairs")
    widths = _int_list(m.get("widths"), f"{where}.widths", 0, MAX_WIDTH)
    if not 1 <= len(widths) <= 2:  # the worker loop stacks at most two parts
        raise InputError(f"{where}: a layer has one or two parts, not {len(widths)}")
    return {
        "n_out": untrusted.json_int(m.get("n_out"), f"{where}.n_out", 0, MAX_WIDTH),
        "n_boundary": untrusted.json_int(m.get("n_boundary"), f"{where}.n_boundary", 0, MAX_WIDTH),
        "widths": widths,
        "sends": [
            (
                untrusted.json_int(dst, f"{where}.sends[{i}] dst", 0, MAX_WORKERS - 1),
                untrusted.json_int(wanted, f"{where}.sends[{i}] wanted", 1, MAX_WIDTH),
            )
            for i, (dst, wanted) in enumerate(sends)
        ],
        "sources": _int_list(m.get("sources"), f"{where}.sources", 0, MAX_WORKERS - 1),
        "offsets": _int_list(m.get("offsets"), f"{where}.offsets", 0, MAX_WIDTH),
    }


def _meta(raw: np.ndarray) -> tuple[int, list[dict[str, Any]]]:
    """The shard's JSON description with every field's type and bounds checked."""
    if raw.dtype != np.uint8:
        raise InputError(f"meta must be uint8 (JSON text), got {raw.dtype}")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"meta is not JSON: {type(exc).__name__}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list):
        raise InputError("meta must be an object with a list of layers")
    worker = untrusted.json_int(meta.get("worker"), "meta.worker", 0, MAX_WORKERS - 1)
    if not meta["layers"]:
        raise InputError("meta.layers is empty")
    layers = [_layer_meta(m, f"meta.layers[{k}]") for k, m in enumerate(meta["layers"])]
    return worker, layers


def shard_from_bytes(data: bytes, worker: int | None = None, workers: int | None = None) -> Shard:
    """Inverse of :func:`shard_to_bytes`; anything malformed raises InputError, never executes.

    The file comes from outside (a model store), so it is checked completely (:func:`check_shard`)
    before any kernel sees it; pass ``worker`` and ``workers`` to also check it is the shard asked
    for and names only peers that exist.
    """
    try:
        arrays = untrusted.read_npz(data, "shard", _SHARD_DTYPES)
        if "meta" not in arrays:
            raise InputError("no meta member")
        me, metas = _meta(arrays.pop("meta"))
        expected = _names(metas)
        if set(arrays) != expected:
            odd = sorted(set(arrays) ^ expected)
            raise InputError(f"members missing or unexpected: {', '.join(odd[:5])}")
        layers = []
        for k, m in enumerate(metas):
            parts = [
                Part(
                    width,
                    tuple(arrays[f"{k}.{j}.local{n}"] for n in range(6)),  # type: ignore[arg-type]
                    tuple(arrays[f"{k}.{j}.remote{n}"] for n in range(6)),  # type: ignore[arg-type]
                )
                for j, width in enumerate(m["widths"])
            ]
            sends = [
                (dst, arrays[f"{k}.send{i}"], wanted) for i, (dst, wanted) in enumerate(m["sends"])
            ]
            layers.append(
                LayerShard(m["n_out"], m["n_boundary"], parts, sends, m["sources"], m["offsets"])
            )
        shard = Shard(me, arrays["inputs"], layers)
        check_shard(shard, worker, workers)
    except InputError as exc:
        raise InputError(f"not a valid fsd shard: {exc}") from None
    return shard


def _check_csr(
    what: str, csr: Csr, nrows: int, ncols: int, dtype: np.dtype[Any] | None
) -> np.dtype[Any]:
    """A CSR matrix as every kernel reads it: indptr int64 from 0 to nnz, monotone; indices int32
    in [0, ncols); values finite, of ``dtype`` (the shard's, once known). Returns the dtype."""
    indptr, indices, values = csr
    if indptr.dtype != _INT64 or indptr.ndim != 1 or len(indptr) != nrows + 1:
        raise InputError(
            f"{what}: indptr must be {nrows + 1} int64, got {untrusted.describe(indptr)}"
        )
    if indices.dtype != _INT32 or values.ndim != 1 or len(values) != len(indices):
        raise InputError(f"{what}: indices must be int32 and as many as the values")
    if values.dtype not in _FLOATS or (dtype is not None and values.dtype != dtype):
        raise InputError(f"{what}: values are {values.dtype}, expected {dtype or 'float32/64'}")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise InputError(f"{what}: indptr must rise from 0 to {len(indices)}")
    untrusted.check_index(f"{what}: indices", indices, ncols, InputError)
    untrusted.check_finite(f"{what}: values", values, InputError)
    dt: np.dtype[Any] = values.dtype
    return dt


def _check_weights(
    what: str, w: Weights, nrows: int, ncols: int, dtype: np.dtype[Any] | None
) -> np.dtype[Any]:
    """Both copies of a weight matrix (by rows, then transposed), the same shape and size."""
    if len(w) != 6:
        raise InputError(f"{what}: weights are six arrays, got {len(w)}")
    dtype = _check_csr(what, w[:3], nrows, ncols, dtype)
    _check_csr(f"{what} transposed", w[3:], ncols, nrows, dtype)
    if len(w[1]) != len(w[4]):
        raise InputError(f"{what}: the transposed copy has {len(w[4])} entries, not {len(w[1])}")
    return dtype


def _ascending(values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(values))


def _check_sends(
    what: str, sends: Sends, width_in: int, boundary: int, me: int, peers: int
) -> None:
    """Selection maps as gather_columns reads them: int32, one per input, each wanted position
    hit exactly once (positions fit the peer's u16/u32 list), only boundary inputs selected."""
    dsts = [dst for dst, _, _ in sends]
    if not _ascending(dsts) or any(d == me or not 0 <= d < peers for d in dsts):
        raise InputError(f"{what}: send destinations {dsts} must ascend, exist, not be {me}")
    for dst, selmap, wanted in sends:
        where = f"{what}: selmap for {dst}"
        if selmap.dtype != _INT32 or selmap.ndim != 1 or len(selmap) != width_in:
            raise InputError(f"{where} must be {width_in} int32, got {untrusted.describe(selmap)}")
        hits = selmap[selmap >= 0]
        untrusted.check_index(where, hits, wanted, InputError)
        # as many hits as positions (checked first: it bounds the count below), each hit once
        if len(hits) != wanted or (np.bincount(hits, minlength=wanted) != 1).any():
            raise InputError(f"{where} must select each of its {wanted} positions once")
        if (selmap < -1).any() or (selmap[boundary:] >= 0).any():
            raise InputError(f"{where} selects a non-boundary input or holds a value below -1")


def _check_layer(
    what: str, layer: LayerShard, width_in: int, boundary: int, me: int, peers: int,
    dtype: np.dtype[Any] | None,
) -> np.dtype[Any] | None:  # fmt: skip
    nb, n_out, parts = layer.n_boundary, layer.n_out, layer.parts
    widths = [p.width for p in parts]
    if not 1 <= len(parts) <= 2 or sum(widths) != n_out or not 0 <= nb <= n_out:
        raise InputError(f"{what}: parts {widths} do not add up to {n_out} outputs")
    if (len(parts) == 2 and (widths[0] != nb or 0 in widths)) or (
        len(parts) == 1 and nb not in (0, n_out)
    ):
        raise InputError(f"{what}: parts {widths} do not put the {nb} boundary outputs first")
    _check_sends(what, layer.sends, width_in, boundary, me, peers)
    sources, offsets = layer.sources, layer.offsets
    if not _ascending(sources) or any(s == me or not 0 <= s < peers for s in sources):
        raise InputError(f"{what}: sources {sources} must ascend, exist, not be {me}")
    n_remote = layer.n_remote
    if len(offsets) != len(sources) or (
        sources and (offsets[0] != 0 or not _ascending([*offsets, n_remote]))
    ):
        raise InputError(f"{what}: offsets {offsets} do not split {n_remote} received columns")
    if not sources and n_remote:
        raise InputError(f"{what}: {n_remote} received columns but no sources")
    for j, part in enumerate(parts):
        rows_remote = len(part.w_remote[0]) - 1 if len(part.w_remote) == 6 else -1
        if rows_remote != n_remote:
            raise InputError(f"{what}: part {j} receives {rows_remote} columns, not {n_remote}")
        dtype = _check_weights(f"{what} part {j} local", part.w_local, width_in, part.width, dtype)
        dtype = _check_weights(
            f"{what} part {j} remote", part.w_remote, n_remote, part.width, dtype
        )
    return dtype


def check_shard(shard: Shard, worker: int | None = None, workers: int | None = None) -> None:
    """Everything the worker loop and the kernels assume of a shard, or InputError.

    Kernels do no bounds checks, so each weight matrix must be a well-formed CSR whose rows match
    the activations it multiplies (the previous layer's outputs, or what the sources send) and
    whose columns match its part; selection maps must be permutations into the peer's list; peers
    must exist. ``worker``/``workers``: the shard asked for and how many workers the run has.
    """
    peers = MAX_WORKERS if workers is None else workers
    if not 0 <= shard.worker < peers:
        raise InputError(f"worker {shard.worker} is outside 0..{peers - 1}")
    if worker is not None and shard.worker != worker:
        raise InputError(f"this is worker {shard.worker}'s shard, not worker {worker}'s")
    inputs = shard.inputs
    if inputs.dtype != _INT64 or inputs.ndim != 1 or len(inputs) > MAX_WIDTH:
        raise InputError(f"inputs must be int64, got {untrusted.describe(inputs)}")
    if len(inputs) and (inputs[0] < 0 or (np.diff(inputs) <= 0).any()):
        raise InputError("inputs must be distinct neuron ids in ascending order")
    if not shard.layers:
        raise InputError("a shard has at least one layer")
    width_in, boundary = len(inputs), len(inputs)  # level 0 has no boundary order
    dtype: np.dtype[Any] | None = None
    for k, layer in enumerate(shard.layers):
        dtype = _check_layer(f"layer {k}", layer, width_in, boundary, shard.worker, peers, dtype)
        width_in, boundary = layer.n_out, layer.n_boundary


# -- per-layer objects: what a streaming worker fetches, one at a time ---------------------------


def _rows_only(w: Weights) -> Csr:
    return w[0], w[1], w[2]


def with_columns(rows: Csr, ncols: int) -> Weights:
    """Weights by rows plus the by-columns copy the dense block wants, derived here (at load
    time: a store keeps weights once). Costs one O(nnz) transpose, a few percent of a layer."""
    indptr, indices, values = rows
    m = sp.csr_matrix((values, indices, indptr), shape=(len(indptr) - 1, ncols))
    return (indptr, indices, values, *_csr_arrays(m.transpose(), values.dtype))


def layer_to_bytes(worker: int, k: int, layer: LayerShard, after: Sends) -> bytes:
    """Worker ``worker``'s part of layer ``k`` (0-based) as one npz, weights stored once (by
    rows), with ``after``: the sends of layer k+1 (what the worker ships as soon as layer k is
    done, so it never needs layer k+1's weights early). The object names its worker and layer,
    so a swapped object is refused on load."""
    arrays: dict[str, np.ndarray] = {}
    for i, (_, selmap, _) in enumerate(after):
        arrays[f"send{i}"] = selmap
    for j, part in enumerate(layer.parts):
        for n, a in enumerate(_rows_only(part.w_local)):
            arrays[f"{j}.local{n}"] = a
        for n, a in enumerate(_rows_only(part.w_remote)):
            arrays[f"{j}.remote{n}"] = a
    meta = {
        "worker": worker,
        "layer": k,
        "n_out": layer.n_out,
        "n_boundary": layer.n_boundary,
        "widths": [p.width for p in layer.parts],
        "sends": [[dst, wanted] for dst, _, wanted in after],
        "sources": layer.sources,
        "offsets": layer.offsets,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def header_to_bytes(worker: int, inputs: np.ndarray, depth: int, first: Sends) -> bytes:
    """A worker's small header: its input columns, how many layers follow, and the sends of
    layer 0 (which of its inputs each peer needs)."""
    sends = [[dst, wanted] for dst, _, wanted in first]
    meta = json.dumps({"worker": worker, "depth": depth, "sends": sends}).encode()
    arrays = {f"send{i}": selmap for i, (_, selmap, _) in enumerate(first)}
    arrays["inputs"] = inputs.astype(np.int64)
    arrays["meta"] = np.frombuffer(meta, np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _read_sends(
    what: str, raw: object, arrays: dict[str, np.ndarray], width_in: int, boundary: int,
    me: int, peers: int,
) -> Sends:  # fmt: skip
    """Sends listed in a per-layer object's meta, with their selection maps, checked."""
    if not isinstance(raw, list) or not all(isinstance(s, list) and len(s) == 2 for s in raw):
        raise InputError(f"{what}: sends must be a list of [dst, wanted] pairs")
    sends = []
    for i, (dst, wanted) in enumerate(raw):
        if f"send{i}" not in arrays:
            raise InputError(f"{what}: no selection map send{i}")
        sends.append(
            (
                untrusted.json_int(dst, f"{what}.sends[{i}] dst", 0, MAX_WORKERS - 1),
                arrays[f"send{i}"],
                untrusted.json_int(wanted, f"{what}.sends[{i}] wanted", 1, MAX_WIDTH),
            )
        )
    _check_sends(what, sends, width_in, boundary, me, peers)
    return sends


MAX_DEPTH = 1 << 20
"""Most layers a header may announce."""


def _json_meta(raw: np.ndarray) -> dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise InputError(f"meta must be uint8 (JSON text), got {raw.dtype}")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"meta is not JSON: {type(exc).__name__}") from None
    if not isinstance(meta, dict):
        raise InputError("meta must be an object")
    return meta


def header_from_bytes(data: bytes, worker: int, workers: int) -> tuple[np.ndarray, int, Sends]:
    """``(inputs, depth, sends of layer 0)`` of worker ``worker``'s header, checked."""
    try:
        arrays = untrusted.read_npz(data, "header", (_INT64, _INT32, np.dtype(np.uint8)))
        if not {"inputs", "meta"} <= set(arrays):
            raise InputError(f"members {sorted(arrays)[:4]} are not inputs, meta, send<i>")
        meta = _json_meta(arrays.pop("meta"))
        if set(meta) != {"worker", "depth", "sends"}:
            raise InputError("meta must name worker, depth and sends, and nothing else")
        me = untrusted.json_int(meta["worker"], "meta.worker", 0, MAX_WORKERS - 1)
        depth = untrusted.json_int(meta["depth"], "meta.depth", 1, MAX_DEPTH)
        if me != worker or not 0 <= worker < workers:
            raise InputError(f"this is worker {me}'s header, not worker {worker}'s of {workers}")
        inputs = arrays.pop("inputs")
        # the same checks as a whole shard's inputs
        if inputs.dtype != _INT64 or inputs.ndim != 1 or len(inputs) > MAX_WIDTH:
            raise InputError(f"inputs must be int64, got {untrusted.describe(inputs)}")
        if len(inputs) and (inputs[0] < 0 or (np.diff(inputs) <= 0).any()):
            raise InputError("inputs must be distinct neuron ids in ascending order")
        n = len(inputs)
        first = _read_sends("header", meta["sends"], arrays, n, n, me, workers)
        if len(arrays) != len(first):
            raise InputError("members missing or unexpected")
    except InputError as exc:
        raise InputError(f"not a valid fsd shard header: {exc}") from None
    return inputs, depth, first


def _layer_names(m: dict[str, Any]) -> set[str]:
    names = {f"send{i}" for i in range(len(m["sends"]))}
    for j in range(len(m["widths"])):
        names.update(f"{j}.{side}{n}" for side in ("local", "remote") for n in range(3))
    return names


class LayerReader:
    """Turns one worker's per-layer objects back into LayerShards, in order, each checked as
    :func:`check_shard` checks a whole shard (rows against the previous layer's outputs, peers
    in range, one dtype throughout), and checked to be the worker's and the layer asked for.

    Made from the worker's header (:func:`header_from_bytes`); :meth:`read` returns layer k and
    the sends of layer k+1 (empty after the last layer).
    """

    def __init__(
        self, worker: int, workers: int, header: tuple[np.ndarray, int, Sends],
        dtype: np.dtype[Any] | None = None,
    ) -> None:  # fmt: skip
        self.worker, self.workers = worker, workers
        self.inputs, self.depth, self.first = header
        self.dtype = dtype
        self._next = 0
        self._width = self._boundary = len(self.inputs)
        self._sends = self.first

    def read(self, k: int, data: bytes) -> tuple[LayerShard, Sends]:
        """Layer ``k`` (0-based) from its object; layers must come in order."""
        where = f"worker {self.worker}'s layer {k}"
        if k != self._next or k >= self.depth:
            raise InputError(f"{where}: expected layer {self._next} of {self.depth}")
        try:
            arrays = untrusted.read_npz(data, "layer", _SHARD_DTYPES)
            if "meta" not in arrays:
                raise InputError("no meta member")
            raw = _json_meta(arrays.pop("meta"))
            me = untrusted.json_int(raw.get("worker"), "meta.worker", 0, MAX_WORKERS - 1)
            layer_k = untrusted.json_int(raw.get("layer"), "meta.layer", 0, MAX_DEPTH)
            if me != self.worker or layer_k != k:
                raise InputError(f"this is worker {me}'s layer {layer_k}")
            m = _layer_meta(raw, "meta")
            expected = _layer_names(m)
            if set(arrays) != expected:
                odd = sorted(set(arrays) ^ expected)
                raise InputError(f"members missing or unexpected: {', '.join(odd[:5])}")
            parts = []
            for j, width in enumerate(m["widths"]):
                local: Csr = (arrays[f"{j}.local0"], arrays[f"{j}.local1"], arrays[f"{j}.local2"])
                remote: Csr = (
                    arrays[f"{j}.remote0"], arrays[f"{j}.remote1"], arrays[f"{j}.remote2"]
                )  # fmt: skip
                # rows checked before the transpose reads them; the layer check redoes it whole
                _check_csr(f"part {j} local", local, self._width, width, self.dtype)
                _check_csr(f"part {j} remote", remote, len(remote[0]) - 1, width, self.dtype)
                parts.append(Part(width, with_columns(local, width), with_columns(remote, width)))
            layer = LayerShard(
                m["n_out"], m["n_boundary"], parts, self._sends, m["sources"], m["offsets"]
            )
            self.dtype = _check_layer(
                "layer", layer, self._width, self._boundary, self.worker, self.workers, self.dtype
            )
            if k + 1 == self.depth and (layer.n_boundary or m["sends"]):
                raise InputError("the last layer has boundary outputs or sends")
            after = _read_sends(
                "meta", raw["sends"], arrays, layer.n_out, layer.n_boundary, me, self.workers
            )
        except InputError as exc:
            raise InputError(f"not a valid fsd layer shard ({where}): {exc}") from None
        self._next += 1
        self._width, self._boundary, self._sends = layer.n_out, layer.n_boundary, after
        return layer, after
