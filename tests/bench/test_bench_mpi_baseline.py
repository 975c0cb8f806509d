"""The MPI baseline's exchange (benchmarks/mpi_baseline.py): each rank sends each peer exactly the
non-zero activations fsd's plan says it needs, and the result is the oracle's.

The layer loop is driven here rank by rank in one process, over a mailbox in place of MPI (no
mpirun needed); the last test runs it under a real ``mpirun`` when Open MPI and mpi4py are here.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import mpi_baseline
from fsd import kernels, reference
from fsd.coordinator import split_inputs
from fsd.model import Images, Network
from fsd.partition import Plan, make_plan
from fsd.shard import Shard, build_shards

RANKS = 3  # uneven slices, and every rank has two peers


class Mailbox:
    """What was sent and not yet received, by (src, dst, tag); one view per rank."""

    def __init__(self) -> None:
        self.slots: dict[tuple[int, int, int], np.ndarray] = {}
        self.log: list[tuple[int, int, int, np.ndarray]] = []

    def link(self, me: int) -> _RankLink:
        return _RankLink(self, me)


class _RankLink:
    def __init__(self, box: Mailbox, me: int) -> None:
        self.box, self.me = box, me

    def send(self, dst: int, tag: int, buf: np.ndarray) -> None:
        key = (self.me, dst, tag)
        assert key not in self.box.slots, f"{key} sent twice"
        self.box.slots[key] = buf
        self.box.log.append((*key, buf))

    def recv(self, src: int, tag: int) -> np.ndarray:
        return self.box.slots.pop((src, self.me, tag))


@pytest.fixture(scope="module")
def net() -> tuple[Network, Images]:
    """Random weights of both signs: no ties for float32 and float64 to round apart (the radix
    nets' equal weights put some sums exactly on the bias), and a few images die by layer 6."""
    rng = np.random.default_rng(7)
    n, depth = 512, 6
    layers = [
        sp.random(
            n, n, density=24 / n, rng=rng, data_rvs=lambda k: rng.uniform(-0.1, 0.3, k)
        ).tocsr()
        for _ in range(depth)
    ]
    network = Network(layers, bias=-0.3)
    images = sp.random(80, n, density=0.2, rng=rng).tocsr()
    images.data[:] = 1.0
    alive = reference.categories(reference.infer(network, images))
    assert 0 < len(alive) < 80
    return network, Images(images, {depth: alive})


@pytest.fixture(scope="module")
def cut(net: tuple[Network, Images]) -> tuple[Plan, list[Shard]]:
    network, _ = net
    plan = make_plan(network, RANKS, mpi_baseline.PARTITION)
    return plan, build_shards(network, plan, np.dtype(mpi_baseline.DTYPE))


def _serial(
    network: Network, images: sp.csr_matrix, plan: Plan, shards: list[Shard], box: Mailbox
) -> list[kernels.Csr]:
    """Every rank's layer loop, layer by layer (all of layer k's messages exist before k + 1)."""
    n, dtype = images.shape[0], mpi_baseline.DTYPE
    inputs = split_inputs(images, plan.owners[0], RANKS, dtype)
    links = [box.link(p) for p in range(RANKS)]
    counters = [mpi_baseline.Counters() for _ in range(RANKS)]
    ys: list[kernels.Csr] = []
    for p in range(RANKS):
        ys.append(kernels.coo_to_csr(n, *inputs[p]))
        mpi_baseline.send_layer(shards[p], 0, ys[p], links[p], counters[p])
    for k in range(network.depth):
        for p in range(RANKS):
            ys[p] = mpi_baseline.run_layer(
                shards[p], k, ys[p], links[p], counters[p], n, network.bias, network.ymax, dtype
            )
    return ys


def test_each_rank_sends_exactly_the_needed_activations_and_the_answer_is_the_oracles(
    net: tuple[Network, Images], cut: tuple[Plan, list[Shard]]
) -> None:
    network, images = net
    plan, shards = cut
    box = Mailbox()
    ys = _serial(network, images.matrix, plan, shards, box)
    assert not box.slots, "sent but never received"

    # per layer, one message for each (src, dst) pair of the plan and no other
    for k, layer in enumerate(plan.layers):
        sent = {(s, d) for s, d, tag, _ in box.log if tag == k + 1}
        assert sent == set(layer.pairs), f"layer {k + 1}"

    # each message carries the sender's non-zero activations of exactly the planned neurons
    levels = [sp.csr_matrix(images.matrix, dtype=np.float64)]
    for k in range(network.depth):
        levels.append(reference.infer(network.truncated(k + 1), images.matrix))
    u32 = np.dtype(np.uint32)
    for src, dst, tag, buf in box.log:
        needed = plan.layers[tag - 1].pairs[(src, dst)]
        pos = mpi_baseline.position_dtype(len(needed))
        rows, counts, positions, values = mpi_baseline.unpack(
            buf, [u32, u32, pos, np.dtype(mpi_baseline.DTYPE)]
        )
        got = sp.csr_matrix(
            (values, (np.repeat(rows, counts), needed[positions])), shape=levels[0].shape
        )
        want = levels[tag - 1][:, needed].tocsr()
        assert got.nnz == want.nnz, (src, dst, tag)
        np.testing.assert_allclose(got[:, needed].toarray(), want.toarray(), rtol=1e-4, atol=1e-5)

    # rank results combine into the oracle's answer
    truth = reference.infer(network, images.matrix)
    sums = np.zeros(images.count)
    for y in ys:
        alive, row_sums = mpi_baseline.result_arrays(y)
        np.add.at(sums, alive.astype(np.int64), row_sums)
    assert np.array_equal(np.flatnonzero(sums) + 1, images.truth[network.depth])
    np.testing.assert_allclose(sums, reference.row_sums(truth), rtol=1e-4)


def test_pack_round_trips_empty_and_mixed_arrays() -> None:
    arrays: list[np.ndarray] = [
        np.array([3, 7], np.uint32),
        np.empty(0, np.uint32),
        np.array([1, 65535], np.uint16),
        np.array([0.5, 32.0, 1.25], np.float32),
    ]
    dtypes = [a.dtype for a in arrays]
    back = mpi_baseline.unpack(mpi_baseline.pack(arrays), dtypes)
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="holds"):
        mpi_baseline.unpack(
            np.concatenate([mpi_baseline.pack(arrays), np.zeros(1, np.uint8)]), dtypes
        )


@pytest.mark.skipif(bool(mpi_baseline.mpi_missing()), reason=mpi_baseline.mpi_missing() or "-")
def test_mpirun_two_ranks_is_exact(net: tuple[Network, Images]) -> None:
    network, images = net
    plan = make_plan(network, 2, mpi_baseline.PARTITION)
    out = mpi_baseline.run_mpi(network, images.matrix, plan, repeat=2)
    assert out["ranks"] == 2 and out["runs_agree"]
    assert out["categories"] == images.truth[network.depth].tolist()
    assert out["activation_messages"] == sum(len(t.pairs) for t in plan.layers)
    truth = reference.row_sums(reference.infer(network, images.matrix))
    np.testing.assert_allclose(out["row_sums"], truth[truth > 0], rtol=1e-4)
