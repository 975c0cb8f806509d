"""The distributed engine is exact: truth categories for every worker count and partitioner."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from fsd import kernels, reference
from fsd.coordinator import RunConfig, infer, prepare, run
from fsd.errors import WorkerError
from fsd.model import Images, Network
from fsd.model.network import DTYPES
from fsd.partition import PARTITIONERS
from fsd.task import WorkerTask


@pytest.mark.parametrize("partition", PARTITIONERS)
@pytest.mark.parametrize("workers", [1, 2, 3, 4, 8])
def test_truth_categories_on_shared_net(
    shared_net: Network, shared_images: Images, workers: int, partition: str
) -> None:
    config = RunConfig(workers=workers, partition=partition)
    result = run(shared_net, shared_images.matrix, config)
    assert result.categories.tolist() == shared_images.truth[120].tolist()
    assert len(result.categories) == 73
    assert result.workers == workers
    assert len(result.per_layer) == 120
    if workers > 1:
        assert result.activation_bytes > 0


def _small(seed: int = 3) -> tuple[Network, sp.csr_matrix]:
    from fsd.model.generate import radix_net, synthetic_images

    return radix_net(256, 12, seed), synthetic_images(256, 300, seed).matrix


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_oracle_activations(dtype: str) -> None:
    network, images = _small()
    result = run(network, images, RunConfig(workers=3, partition="random", dtype=dtype))
    final = reference.infer(network, images)
    expected = reference.categories(final)
    assert result.categories.tolist() == expected.tolist()
    np.testing.assert_allclose(result.row_sums, reference.row_sums(final)[expected - 1], rtol=1e-5)


def test_prepared_network_serves_repeated_runs() -> None:
    network, images = _small()
    config = RunConfig(workers=2, partition="min-comm")
    prepared = prepare(network, config)
    first = infer(prepared, images, config)
    second = infer(prepared, images[:100], config)
    assert (
        first.categories.tolist() == reference.categories(reference.infer(network, images)).tolist()
    )
    assert second.categories.tolist() == [c for c in first.categories if c <= 100]


def test_failing_worker_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    network, images = _small()
    real = kernels.finish_layer
    calls = {"n": 0}

    def broken(*args: Any) -> Any:
        calls["n"] += 1
        if os.environ.get("FSD_TEST_WORKER") == "1" and calls["n"] == 5:
            raise RuntimeError("injected fault")
        return real(*args)

    # forked workers inherit the patch; only the worker whose id is in the env fails
    monkeypatch.setattr(kernels, "finish_layer", broken)
    monkeypatch.setattr("fsd.worker._input_matrix", _tagging_input(monkeypatch))
    with pytest.raises(WorkerError) as info:
        run(network, images, RunConfig(workers=3, layer_timeout=20, timeout=60))
    assert info.value.worker == 1
    assert "injected fault" in str(info.value)


def _tagging_input(monkeypatch: pytest.MonkeyPatch) -> object:
    from fsd import worker

    real = worker._input_matrix

    def tag(task: WorkerTask, msg: object) -> kernels.Csr:
        os.environ["FSD_TEST_WORKER"] = str(task.worker)
        return real(task, msg)  # type: ignore[arg-type]

    return tag


def test_dead_worker_is_detected_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    network, images = _small()
    from fsd import worker

    real = worker._input_matrix

    def die(task: WorkerTask, msg: object) -> kernels.Csr:
        if task.worker == 2:
            os._exit(9)  # like an OOM kill: no report at all
        return real(task, msg)  # type: ignore[arg-type]

    monkeypatch.setattr(worker, "_input_matrix", die)
    with pytest.raises(WorkerError) as info:
        run(network, images, RunConfig(workers=3, layer_timeout=30, timeout=60))
    assert info.value.worker == 2
    assert "code 9" in str(info.value)
