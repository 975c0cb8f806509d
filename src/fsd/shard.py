"""What one worker holds: its slice of every layer, re-indexed to local positions, and its sends.

Built once from the network and the plan (by the coordinator, or ahead of time by a model store);
a worker never sees weights or activations it does not need.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError
from fsd.kernels import Csr, Weights
from fsd.model.network import Network
from fsd.partition import Plan


def _csr_arrays(m: sp.csr_matrix | sp.csc_matrix, dtype: np.dtype[np.floating]) -> Csr:
    m = sp.csr_matrix(m)
    return m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data.astype(dtype)


def _weights(m: sp.csr_matrix, dtype: np.dtype[np.floating]) -> Weights:
    """By rows for the sparse scatter and by columns for the dense block (see fsd.kernels)."""
    return (*_csr_arrays(m, dtype), *_csr_arrays(m.transpose(), dtype))


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


def _boundary_first(network: Network, plan: Plan) -> tuple[list[list[np.ndarray]], list[list[int]]]:
    """Each worker's neurons per level, those a peer needs next put first; and how many they are."""
    workers = plan.workers
    owned = [[np.flatnonzero(level == p) for p in range(workers)] for level in plan.owners]
    n_boundary = [[0] * workers for _ in plan.owners]
    for level in range(1, network.depth):  # level 0 keeps its order (the coordinator splits it)
        pairs = plan.layers[level].pairs
        for p in range(workers):
            needed = [ids for (s, _), ids in pairs.items() if s == p]
            if not needed:
                continue
            mask = np.isin(owned[level][p], np.concatenate(needed))
            owned[level][p] = np.concatenate([owned[level][p][mask], owned[level][p][~mask]])
            n_boundary[level][p] = int(mask.sum())
    return owned, n_boundary


def build_shards(network: Network, plan: Plan, dtype: np.dtype[np.floating]) -> list[Shard]:
    """Cut the network into one shard per worker following ``plan``."""
    workers = plan.workers
    owned, n_boundary = _boundary_first(network, plan)
    shards = [Shard(p, owned[0][p], []) for p in range(workers)]
    n = network.neurons
    for k, w in enumerate(network.layers):
        transfers = plan.layers[k].pairs
        # position of each global neuron within its owner's input list at level k
        local_pos = np.empty(n, np.int64)
        for p in range(workers):
            local_pos[owned[k][p]] = np.arange(len(owned[k][p]))
        for p in range(workers):
            ins, outs = owned[k][p], owned[k + 1][p]
            sends = []
            for d in range(workers):
                needed = transfers.get((p, d))
                if needed is None:
                    continue
                selmap = np.full(len(ins), -1, np.int32)
                selmap[local_pos[needed]] = np.arange(len(needed), dtype=np.int32)
                sends.append((d, selmap, len(needed)))
            sources = sorted(s for (s, d) in transfers if d == p)
            blocks = [transfers[(s, p)] for s in sources]
            offsets = list(np.cumsum([0] + [len(b) for b in blocks[:-1]])) if blocks else []
            remote_rows = np.concatenate(blocks) if blocks else np.empty(0, np.int64)
            nb = n_boundary[k + 1][p] if k + 1 < len(n_boundary) else 0
            cuts = [c for c in (outs[:nb], outs[nb:]) if len(c)] or [outs]
            parts = []
            for cut in cuts:
                cols = w[:, cut]
                local, remote = _weights(cols[ins], dtype), _weights(cols[remote_rows], dtype)
                parts.append(Part(len(cut), local, remote))
            shards[p].layers.append(
                LayerShard(
                    n_out=len(outs),
                    n_boundary=nb,
                    parts=parts,
                    sends=sends,
                    sources=sources,
                    offsets=[int(o) for o in offsets],
                )
            )
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


def shard_from_bytes(data: bytes) -> Shard:
    """Inverse of :func:`shard_to_bytes`; malformed input raises InputError, never executes."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        meta = json.loads(bytes(arrays.pop("meta")).decode())
        layers = []
        for k, m in enumerate(meta["layers"]):
            parts = [
                Part(
                    int(width),
                    tuple(arrays[f"{k}.{j}.local{n}"] for n in range(6)),  # type: ignore[arg-type]
                    tuple(arrays[f"{k}.{j}.remote{n}"] for n in range(6)),  # type: ignore[arg-type]
                )
                for j, width in enumerate(m["widths"])
            ]
            sends = [
                (int(dst), arrays[f"{k}.send{i}"], int(wanted))
                for i, (dst, wanted) in enumerate(m["sends"])
            ]
            layers.append(
                LayerShard(
                    int(m["n_out"]),
                    int(m["n_boundary"]),
                    parts,
                    sends,
                    [int(s) for s in m["sources"]],
                    [int(o) for o in m["offsets"]],
                )
            )
        return Shard(int(meta["worker"]), arrays["inputs"], layers)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise InputError(f"not a valid fsd shard: {type(exc).__name__}: {exc}") from None
