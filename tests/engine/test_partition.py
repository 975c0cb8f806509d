"""Partitioners are balanced and the plan sends exactly what each worker needs."""

from __future__ import annotations

import numpy as np
import pytest

from fsd.errors import InputError
from fsd.model import Network
from fsd.model.generate import radix_net
from fsd.partition import PARTITIONERS, make_plan


@pytest.mark.parametrize("method", PARTITIONERS)
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_plan_is_balanced_and_complete(method: str, workers: int) -> None:
    net = radix_net(256, 10, seed=1)
    plan = make_plan(net, workers, method)
    assert len(plan.owners) == net.depth + 1
    for level in plan.owners:
        sizes = np.bincount(level, minlength=workers)
        assert sizes.max() - sizes.min() <= 1
    for k, w in enumerate(net.layers):
        coo = w.tocoo()
        src, dst = plan.owners[k][coo.row], plan.owners[k + 1][coo.col]
        # brute force: every remote (neuron, receiver) pair is planned, nothing else
        needed = {
            (int(s), int(d), int(i)) for s, d, i in zip(src, dst, coo.row, strict=True) if s != d
        }
        planned = {(s, d, int(i)) for (s, d), ids in plan.layers[k].pairs.items() for i in ids}
        assert planned == needed
        assert plan.layers[k].volume == len(needed)


def test_min_comm_beats_random_on_shared_net(shared_net: Network) -> None:
    random = make_plan(shared_net, 8, "random")
    min_comm = make_plan(shared_net, 8, "min-comm")
    assert min_comm.total_volume < 0.5 * random.total_volume


def test_bad_arguments() -> None:
    net = radix_net(256, 2)
    with pytest.raises(InputError, match="between 1 and 256"):
        make_plan(net, 0)
    with pytest.raises(InputError, match="between 1 and 256"):
        make_plan(net, 257)
    with pytest.raises(InputError, match="unknown partitioner"):
        make_plan(net, 2, "metis-ish")


def test_min_comm_tries_metis_only_where_greedy_is_worse(monkeypatch: pytest.MonkeyPatch) -> None:
    """METIS is most of min-comm's cost: it is tried on the first layer and wherever greedy does
    worse than METIS did when last tried, and the plan is the one trying it everywhere gives."""
    from fsd import partition

    net = radix_net(4096, 24, seed=3)
    tried: list[int] = []
    real_groups, real_level = partition._metis_groups, partition._min_comm_level

    def counting(w: object, workers: int, seed: int) -> np.ndarray:
        tried.append(1)
        return real_groups(w, workers, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(partition, "_metis_groups", counting)
    fast = make_plan(net, 4, "min-comm")
    assert 1 <= len(tried) < net.depth // 2
    monkeypatch.setattr(
        partition,
        "_min_comm_level",
        lambda w, own, workers, seed, bar=None: real_level(w, own, workers, seed, None),
    )
    tried.clear()
    everywhere = make_plan(net, 4, "min-comm")
    assert len(tried) > net.depth // 2
    assert fast.total_volume == everywhere.total_volume
    assert all(np.array_equal(a, b) for a, b in zip(fast.owners, everywhere.owners, strict=True))
