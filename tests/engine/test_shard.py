"""Shards: boundary-first column order, and the parts put back together equal the whole layer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fsd import kernels
from fsd.model.generate import radix_net
from fsd.partition import make_plan
from fsd.shard import build_shards


@pytest.mark.parametrize(("method", "workers"), [("contiguous", 2), ("min-comm", 3), ("random", 4)])
def test_boundary_columns_come_first_and_are_exactly_what_peers_need(
    method: str, workers: int
) -> None:
    network = radix_net(256, 6, seed=1)
    plan = make_plan(network, workers, method)
    shards = build_shards(network, plan, np.dtype(np.float32))
    for shard in shards:
        for k, layer in enumerate(shard.layers[:-1]):
            nxt = shard.layers[k + 1]
            needed = np.zeros(layer.n_out, bool)
            for _, selmap, wanted in nxt.sends:
                assert (selmap >= 0).sum() == wanted
                needed |= selmap >= 0
            assert needed[: layer.n_boundary].all()
            assert not needed[layer.n_boundary :].any()
            assert sum(p.width for p in layer.parts) == layer.n_out
        assert shard.layers[-1].n_boundary == 0


def test_hstack_puts_column_blocks_side_by_side() -> None:
    rng = np.random.default_rng(3)
    a = sp.csr_matrix(sp.random(9, 4, density=0.4, random_state=rng, dtype=np.float32))
    b = sp.csr_matrix(sp.random(9, 5, density=0.4, random_state=rng, dtype=np.float32))

    def arrays(m: sp.csr_matrix) -> kernels.Csr:
        return m.indptr.astype(np.int64), m.indices.astype(np.int32), m.data

    p, i, x = kernels.hstack(*arrays(a), *arrays(b), 4)
    got = sp.csr_matrix((x, i, p), shape=(9, 9)).toarray()
    np.testing.assert_array_equal(got, sp.hstack([a, b]).toarray())
