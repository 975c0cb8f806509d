"""Neuron partitioners and the per-layer communication plan.

``owners[k]`` says which worker owns each neuron of activation level k (0 = input pixels,
k = the output of layer k). Worker p computes the outputs ``owners[k] == p`` of layer k; for that
it needs every input neuron i with an edge into one of them, and the owner of i at level k-1 sends
it. A different partition per level is allowed: the plan derives the transfers from consecutive
levels, so activations always move exactly to where the next layer needs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError
from fsd.model.network import Network

log = logging.getLogger(__name__)

PARTITIONERS = ("contiguous", "random", "min-comm")


@runtime_checkable
class LayerSource(Protocol):
    """A network read one layer at a time (contract 1 of issue 12; the model-format helper's
    ``fsd.model.source.LayerSource`` is the same protocol). Planning and cutting only ever hold
    one layer of it, so a network of any depth fits."""

    @property
    def neurons(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def bias(self) -> float: ...
    @property
    def ymax(self) -> float: ...

    def layer(self, k: int) -> sp.csr_matrix:
        """Layer ``k`` (1-based), shape (neurons, neurons), read on demand."""
        ...

    def edges(self) -> int: ...


@dataclass
class NetworkSource:
    """An in-memory :class:`Network` as a :class:`LayerSource` (``as_source`` semantics)."""

    network: Network

    @property
    def neurons(self) -> int:
        return self.network.neurons

    @property
    def depth(self) -> int:
        return self.network.depth

    @property
    def bias(self) -> float:
        return float(self.network.bias)

    @property
    def ymax(self) -> float:
        return float(self.network.ymax)

    def layer(self, k: int) -> sp.csr_matrix:
        if not 1 <= k <= self.depth:
            raise InputError(f"layer {k} is outside 1..{self.depth}")
        return self.network.layers[k - 1]

    def edges(self) -> int:
        return self.network.edges


def as_layers(source: Network | LayerSource) -> LayerSource:
    """``source`` as a LayerSource (a Network is wrapped, anything else taken as it is)."""
    return NetworkSource(source) if isinstance(source, Network) else source


@dataclass
class LayerTransfers:
    """For one layer: ``pairs[(src, dst)]`` = sorted global ids of level k-1 that src sends dst."""

    pairs: dict[tuple[int, int], np.ndarray]
    cut_edges: int  # weight edges whose two ends are on different workers

    @property
    def volume(self) -> int:
        """Activations that cross workers per image (each needed neuron sent once per receiver)."""
        return int(sum(len(v) for v in self.pairs.values()))


@dataclass
class Plan:
    method: str
    workers: int
    neurons: int
    owners: list[np.ndarray]  # depth + 1 arrays of worker ids (level 0 int32, then the smallest)
    layers: list[LayerTransfers] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def total_volume(self) -> int:
        return sum(t.volume for t in self.layers)

    @property
    def total_cut_edges(self) -> int:
        return sum(t.cut_edges for t in self.layers)

    def sources(self, layer: int, worker: int) -> list[int]:
        """Workers that send to ``worker`` at ``layer`` (0-based), in ascending order."""
        return sorted(s for (s, d) in self.layers[layer].pairs if d == worker)

    def owned(self, level: int, worker: int) -> np.ndarray:
        return np.flatnonzero(self.owners[level] == worker)


def check_workers(workers: int, neurons: int) -> None:
    if not 1 <= workers <= neurons:
        raise InputError(f"--workers must be between 1 and {neurons} (the neurons per layer)")


def _transfers(
    w: sp.csr_matrix, own_in: np.ndarray, own_out: np.ndarray, workers: int
) -> LayerTransfers:
    coo = w.tocoo()
    src = own_in[coo.row].astype(np.int64)
    dst = own_out[coo.col].astype(np.int64)
    crossing = src != dst
    n = w.shape[0]
    keys = np.unique((src[crossing] * workers + dst[crossing]) * n + coo.row[crossing])
    pair, neuron = np.divmod(keys, n)
    pairs: dict[tuple[int, int], np.ndarray] = {}
    if len(keys):
        bounds = np.flatnonzero(np.diff(pair)) + 1
        for chunk_pair, chunk in zip(np.split(pair, bounds), np.split(neuron, bounds), strict=True):
            s, d = divmod(int(chunk_pair[0]), workers)
            pairs[(s, d)] = chunk.astype(np.int32)  # neuron ids < 2**31: half the plan
    return LayerTransfers(pairs, int(crossing.sum()))


def _balanced_sizes(n: int, workers: int) -> np.ndarray:
    sizes = np.full(workers, n // workers, np.int64)
    sizes[: n % workers] += 1
    return sizes


def _contiguous(n: int, workers: int) -> np.ndarray:
    return np.repeat(np.arange(workers, dtype=np.int32), _balanced_sizes(n, workers))


def _assign(affinity: np.ndarray, workers: int) -> np.ndarray:
    """Balanced assignment of columns to workers maximising total affinity (greedy, by rounds).

    ``affinity`` is workers x n. Each round every unplaced column bids for its best open worker;
    a worker over capacity keeps its strongest bidders. At most ``workers`` rounds.
    """
    n = affinity.shape[1]
    capacity = _balanced_sizes(n, workers)
    owner = np.full(n, -1, np.int32)
    score = affinity.astype(np.float64)
    # tiny deterministic tie-break that keeps neighbouring ids together
    score += (np.arange(workers)[:, None] == (np.arange(n) * workers // n)[None, :]) * 1e-3
    open_ = np.ones(workers, bool)
    while (owner < 0).any():
        todo = np.flatnonzero(owner < 0)
        masked = np.where(open_[:, None], score[:, todo], -np.inf)
        choice = masked.argmax(axis=0)
        for p in np.unique(choice):
            bidders = todo[choice == p]
            room = capacity[p] - int((owner == p).sum())
            if len(bidders) > room:
                strength = score[p, bidders]
                bidders = bidders[np.argsort(-strength, kind="stable")[:room]]
            owner[bidders] = p
            if (owner == p).sum() >= capacity[p]:
                open_[p] = False
    return owner


def _affinity(w: sp.csr_matrix, own_in: np.ndarray, workers: int) -> np.ndarray:
    """A[p, j] = number of inputs of neuron j that worker p already owns."""
    n = w.shape[0]  # counted straight from the CSR arrays: 5x faster than a one-hot product
    owner_of_entry = np.repeat(own_in.astype(np.int64), np.diff(w.indptr))
    counts = np.bincount(owner_of_entry * n + w.indices, minlength=workers * n)
    return counts.reshape(workers, n).astype(np.float64)


def _metis_groups(w: sp.csr_matrix, workers: int, seed: int) -> np.ndarray:
    """Group outputs that read the same inputs (METIS on the co-input graph of one layer)."""
    import pymetis  # noqa: PLC0415  (heavy C extension, only needed for min-comm)

    pattern = w.copy()
    pattern.data = np.ones_like(pattern.data)
    co = (pattern.T @ pattern).tocsr()
    co.setdiag(0)
    co.eliminate_zeros()
    opts = pymetis.Options(seed=seed, contig=0)
    _, parts = pymetis.part_graph(
        workers,
        pymetis.CSRAdjacency(co.indptr, co.indices),
        eweights=co.data.astype(np.int64),
        options=opts,
    )
    return np.asarray(parts, dtype=np.int32)


def _volume(w: sp.csr_matrix, own_in: np.ndarray, own_out: np.ndarray) -> int:
    coo = w.tocoo()
    workers = int(max(own_in.max(), own_out.max())) + 1
    dst = own_out[coo.col].astype(np.int64)
    crossing = own_in[coo.row] != dst
    return len(np.unique(coo.row[crossing] * workers + dst[crossing]))


def _min_comm_level(
    w: sp.csr_matrix, own_in: np.ndarray, workers: int, seed: int, bar: float | None = None
) -> tuple[np.ndarray, int | None]:
    """Owners of one layer's outputs given its inputs' owners: the better of two candidates,
    and the METIS candidate's volume when it was tried.

    Greedy follows the inputs' placement (good inside a group of similar layers); METIS groups
    outputs by shared inputs and then maps groups onto the workers that hold most of those inputs
    (good after a relabelling). Each is balanced; the lower planned volume wins. METIS is most
    of the cost (0.66 of 0.87 s a layer at 65536 neurons), so it is tried only when greedy does
    worse than ``bar``, what METIS achieved the last time it was tried (None: always): on
    RadiX-Net layers greedy wins every layer it is not tried on, and 1920 layers plan in
    minutes instead of half an hour.
    """
    affinity = _affinity(w, own_in, workers)
    greedy = _assign(affinity, workers)
    best, volume = greedy, _volume(w, own_in, greedy)
    if workers == 1 or volume == 0 or (bar is not None and volume <= bar):
        return best, None
    groups = _metis_groups(w, workers, seed)
    sizes = np.bincount(groups, minlength=workers)
    if sizes.max() - sizes.min() > max(1, w.shape[0] // (workers * 32)):
        return best, None
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    gain = np.zeros((workers, workers))
    for g in range(workers):
        gain[g] = affinity[:, groups == g].sum(axis=1)
    rows, cols = linear_sum_assignment(-gain)
    mapping = np.empty(workers, np.int32)
    mapping[rows] = cols
    metis = _rebalance(mapping[groups], workers)
    tried = _volume(w, own_in, metis)
    return (metis if tried < volume else best), tried


def _rebalance(owner: np.ndarray, workers: int) -> np.ndarray:
    """Move surplus neurons from over-full to under-full workers so sizes match exactly."""
    owner = owner.copy()
    sizes = np.bincount(owner, minlength=workers)
    target = _balanced_sizes(len(owner), workers)
    for p in np.flatnonzero(sizes > target):
        surplus = np.flatnonzero(owner == p)[target[p] :]
        for neuron in surplus:
            q = int(np.flatnonzero(np.bincount(owner, minlength=workers) < target)[0])
            owner[neuron] = q
    return owner


def _input_owners(first: sp.csr_matrix, owners1: np.ndarray, workers: int) -> np.ndarray:
    """Inputs are free to place: put each pixel where layer 1 needs it most."""
    n = first.shape[0]
    pattern = first.copy()
    pattern.data = np.ones_like(pattern.data)
    onehot = sp.csr_matrix((np.ones(n), (owners1, np.arange(n))), shape=(workers, n))
    need = np.asarray((onehot @ pattern.T).todense())
    return _assign(need, workers)


def _owner_dtype(workers: int) -> type[np.signedinteger[Any]]:
    """The smallest integer that holds a worker id: a 1920-level min-comm plan keeps 1921
    owner arrays, 123 MB in int8 against 492 MB in int32 (level 0 stays int32: it is sent)."""
    return np.int8 if workers <= 127 else np.int16 if workers <= 32767 else np.int32


def make_plan(
    source: Network | LayerSource, workers: int, method: str = "contiguous", seed: int = 0
) -> Plan:
    """Partition every activation level among ``workers`` and derive who sends what to whom.

    Reads one layer at a time (each exactly once): the caller holds one layer, never the network.
    min-comm places level k from layer k and the owners of level k-1, so one pass suffices.
    """
    layers = as_layers(source)
    n, depth = layers.neurons, layers.depth
    check_workers(workers, n)
    if method not in PARTITIONERS:
        raise InputError(f"unknown partitioner {method!r}; choose one of {', '.join(PARTITIONERS)}")
    base = _contiguous(n, workers)
    if workers == 1:  # nothing crosses: no layer need be read (a 1920-layer net is 33 GB)
        nothing = LayerTransfers({}, 0)
        return Plan(method, 1, n, [base] * (depth + 1), [nothing] * depth)
    if method == "random":
        base = np.random.default_rng(seed).permutation(base).astype(np.int32)
    owners = [base]
    transfers = []
    bar: int | None = None  # min-comm: what METIS achieved when last tried
    for k in range(1, depth + 1):
        w = layers.layer(k)
        if w.shape != (n, n):
            raise InputError(f"layer {k} has shape {w.shape}, expected ({n}, {n})")
        if method == "min-comm":
            level, tried = _min_comm_level(w, owners[-1], workers, seed, bar)
            owners.append(level.astype(_owner_dtype(workers)))
            bar = tried if tried is not None else bar
            if k == 1 and workers > 1:
                owners[0] = _input_owners(w, owners[1], workers)
        else:
            owners.append(base)
        transfers.append(_transfers(w, owners[k - 1], owners[k], workers))
        del w
    plan = Plan(method, workers, n, owners, transfers)
    log.debug("plan %s W=%d volume=%d", method, workers, plan.total_volume)
    return plan
