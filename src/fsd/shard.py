"""What one worker holds: its slice of every layer, re-indexed to local positions, and its sends.

Built once from the network and the plan (by the coordinator, or ahead of time by a model store);
a worker never sees weights or activations it does not need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

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
class LayerShard:
    """One worker's part of one layer (columns = its outputs, in ascending global id order)."""

    n_out: int
    w_local: Weights  # rows: this worker's inputs (local positions)
    # (dst, selmap: local input position -> index in dst's list or -1, length of dst's list)
    sends: list[tuple[int, np.ndarray, int]]
    sources: list[int]  # workers that send to this one, ascending
    offsets: list[int]  # column offset of each source's activations in the received block
    w_remote: Weights  # rows: received activations, sources stacked in order


@dataclass
class Shard:
    worker: int
    inputs: np.ndarray  # global ids of level-0 neurons this worker owns (its input columns)
    layers: list[LayerShard]

    @property
    def nbytes(self) -> int:
        total = self.inputs.nbytes
        for layer in self.layers:
            total += sum(a.nbytes for a in layer.w_local) + sum(a.nbytes for a in layer.w_remote)
            total += sum(sel.nbytes for _, sel, _ in layer.sends)
        return total


def build_shards(network: Network, plan: Plan, dtype: np.dtype[np.floating]) -> list[Shard]:
    """Cut the network into one shard per worker following ``plan``."""
    workers = plan.workers
    owned = [[np.flatnonzero(level == p) for p in range(workers)] for level in plan.owners]
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
            cols = w[:, outs]
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
            shards[p].layers.append(
                LayerShard(
                    n_out=len(outs),
                    w_local=_weights(cols[ins], dtype),
                    sends=sends,
                    sources=sources,
                    offsets=[int(o) for o in offsets],
                    w_remote=_weights(cols[remote_rows], dtype),
                )
            )
    return shards
