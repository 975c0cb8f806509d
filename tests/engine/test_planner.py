"""The memory-budget planner and data-parallel replicas: what it chooses, and that every
(replicas x partitions) combination gives the exact answer."""

from __future__ import annotations

import json
import math
import multiprocessing
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fsd.run
from fsd import cli, coordinator, planner, reference, store, task
from fsd.coordinator import RunConfig, run
from fsd.errors import InputError
from fsd.model.generate import generate
from sameness import forbid_whole_load

# 4096 neurons x 24 layers, 32 connections each: 3.1 M edges, 48 MB of float32 weights kept
# in two layouts; 200 images
NET: dict[str, Any] = {"neurons": 4096, "depth": 24, "edges": 4096 * 32 * 24, "images": 200}


def test_a_model_that_fits_one_worker_is_replicated_not_split() -> None:
    chosen = planner.choose(workers=4, memory_mb=2048, cores=2, **NET)
    assert (chosen.replicas, chosen.partitions, chosen.window) == (4, 1, 24)
    assert chosen.estimate_mb <= 2048
    assert chosen.predicted_s == min(
        planner.choose(workers=4, memory_mb=2048, cores=2, partitions=p, **NET).predicted_s
        for p in (1, 2, 4)
    )


def test_a_budget_one_worker_cannot_meet_even_streaming_splits_the_model() -> None:
    """Streaming one whole model costs reading it on every run, as holding it does; only when
    a worker cannot hold even two of its layers must the model be split."""
    one = planner.worker_mb(partitions=1, window=2, replicas=4, value_bytes=4, **NET)
    resident = planner.worker_mb(partitions=1, window=24, replicas=4, value_bytes=4, **NET)
    streamed = planner.choose(workers=4, memory_mb=(one + resident) / 2, cores=2, **NET)
    assert (streamed.replicas, streamed.partitions) == (4, 1) and 2 <= streamed.window < 24
    two = planner.worker_mb(partitions=2, window=2, replicas=2, value_bytes=4, **NET)
    assert two < one
    chosen = planner.choose(workers=4, memory_mb=(one + two) / 2, cores=2, **NET)
    assert chosen.partitions > 1 and chosen.estimate_mb < one


def _options(budget: float, cores: int, **net: Any) -> dict[int, planner.Parallelism]:
    """Each P that fits ``budget`` with the largest window it can hold."""
    found = {}
    for p in (1, 2, 4, 8):
        try:
            found[p] = planner.choose(workers=8, memory_mb=budget, cores=cores, partitions=p, **net)
        except InputError:
            continue
    return found


def test_a_budget_below_the_resident_model_streams_a_window() -> None:
    """No P holds every layer: each P streams the largest window that fits, and the fastest by
    the time model wins (ties within TOLERANCE to fewer partitions)."""
    full = planner.worker_mb(partitions=4, window=24, replicas=1, value_bytes=4, **NET)
    budget = full - 10

    def mb(p: int, window: int) -> float:
        return planner.worker_mb(partitions=p, window=window, replicas=4 // p, value_bytes=4, **NET)

    chosen = planner.choose(workers=4, memory_mb=budget, cores=2, **NET)
    assert planner.MIN_WINDOW <= chosen.window < 24
    assert chosen.estimate_mb <= budget < mb(chosen.partitions, chosen.window + 1)
    for p in (1, 2, 4):
        if p == chosen.partitions or mb(p, planner.MIN_WINDOW) > budget:
            continue
        other = planner.choose(workers=4, memory_mb=budget, cores=2, partitions=p, **NET)
        if p < chosen.partitions:  # passed over: slower beyond the tolerance
            assert other.predicted_s > chosen.predicted_s * (1 + planner.TOLERANCE)
        else:
            assert other.predicted_s * (1 + planner.TOLERANCE) >= chosen.predicted_s


def test_the_time_model_chooses_between_streaming_replicas_and_partitions() -> None:
    """A 65536x480 net at 2048 MB per worker (arithmetic only): one partition would make 8
    replicas each read every layer on every run; splitting it reads the model once and holds
    more of it, and the model says that is faster despite the exchange. With every layer held
    and the same net shallower (120 layers), fewer partitions tie and win."""
    deep: dict[str, Any] = {
        "neurons": 65536,
        "depth": 480,
        "edges": 65536 * 32 * 480,
        "images": 1000,
    }
    options = _options(2048, 2, **deep)
    chosen = planner.choose(workers=8, memory_mb=2048, cores=2, **deep)
    assert options[1].window < 480 and chosen.partitions > 1
    assert chosen.predicted_s == min(o.predicted_s for o in options.values())
    assert options[1].predicted_s > chosen.predicted_s * (1 + planner.TOLERANCE)
    shallow: dict[str, Any] = dict(deep, depth=120, edges=65536 * 32 * 120)
    options = _options(2048, 2, **shallow)
    chosen = planner.choose(workers=8, memory_mb=2048, cores=2, **shallow)
    assert chosen.window == 120
    assert chosen.partitions == min(p for p, o in options.items() if o.window == 120)


def test_a_budget_nothing_fits_is_refused_with_the_estimate() -> None:
    with pytest.raises(InputError, match=r"does not fit 4 workers of 201 MB: .* about \d+ MB"):
        planner.choose(workers=4, memory_mb=201, **NET)


@pytest.mark.parametrize("budget", [100, 200, planner.BASE_MB, 0, -1, (1 << 24) + 1])
def test_a_budget_outside_the_one_memory_range_is_refused(budget: float) -> None:
    """One lower bound for every budget (the flag's, the function's, the planner's): above what a
    worker holds before any model."""
    with pytest.raises(InputError, match=re.escape("must be a number of MB in (200, 16777216]")):
        planner.choose(workers=4, memory_mb=budget, **NET)


@pytest.mark.parametrize(("partitions", "ok"), [(1, True), (2, True), (4, True), (3, False)])
def test_partitions_are_forced_only_if_they_divide_the_workers(partitions: int, ok: bool) -> None:
    if ok:
        chosen = planner.choose(workers=4, memory_mb=4096, partitions=partitions, **NET)
        assert (chosen.partitions, chosen.replicas) == (partitions, 4 // partitions)
    else:
        with pytest.raises(InputError, match="must divide"):
            planner.choose(workers=4, memory_mb=4096, partitions=partitions, **NET)


@pytest.mark.parametrize(
    ("workers", "partitions"), [(1, 1), (2, 1), (4, 2), (6, 3), (6, 2), (4, 4)]
)
def test_every_replicas_by_partitions_combination_is_exact(workers: int, partitions: int) -> None:
    network, images = generate(1024, 6, 60, seed=5)
    oracle = reference.categories(reference.infer(network, images.matrix))
    config = RunConfig(workers=workers, partitions=partitions, partition="min-comm")
    result = run(network, images.matrix, config)
    assert result.categories.tolist() == oracle.tolist()
    assert result.parallelism["replicas"] == workers // partitions
    assert result.parallelism["partitions"] == partitions
    assert result.worker_compute.shape == (workers, network.depth)
    if partitions == 1:
        assert result.activation_bytes == 0  # whole-model replicas exchange no activations
    assert result.peak_rss_mb > 0


def test_fsd_run_reports_the_planners_choice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "net"
    assert cli.main(["generate", "--neurons", "1024", "--layers", "4", "--images", "40",
                     "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert cli.main(["run", "--data", str(out), "--workers", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["correct"] is True
    assert {k: data["parallelism"][k] for k in ("replicas", "partitions")} == {
        "replicas": 2,
        "partitions": 1,
    }
    assert 0 < data["peak_rss_mb"] < data["parallelism"]["memory_mb"]
    assert data["parallelism"]["predicted_s"] > 0
    # each process's peak, the coordinator's first: two replicas of one worker each
    assert len(data["process_rss_mb"]) == 3 and all(mb > 0 for mb in data["process_rss_mb"])
    assert max(data["process_rss_mb"]) == data["peak_rss_mb"]
    assert len(data["function_seconds"]) == 3
    code = cli.main(["run", "--data", str(out), "--workers", "2", "--partitions", "2", "--json"])
    assert code == 0
    forced = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert forced["parallelism"]["partitions"] == 2 and forced["activation_bytes"] > 0
    assert np.array_equal(forced["categories"], data["categories"])
    assert cli.main(["run", "--data", str(out), "--workers", "2", "--partitions", "3"]) == 2


def test_fsd_run_streams_a_window_when_the_budget_is_below_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A budget that holds 3 of 24 layers: workers stream them from a folder, exactly."""
    out = tmp_path / "net"
    args = ["--neurons", "4096", "--layers", "24", "--images", "50", "--out", str(out)]
    assert cli.main(["generate", *args]) == 0
    size = {"neurons": 4096, "depth": 24, "edges": 4096 * 32 * 24, "images": 50}
    budget = planner.worker_mb(partitions=1, window=3, replicas=2, value_bytes=4, **size)
    capsys.readouterr()
    run = ["run", "--data", str(out), "--workers", "2", "--memory-mb", str(int(budget) + 1)]
    assert cli.main([*run, "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["correct"] is True
    assert data["parallelism"]["partitions"] == 1 and data["parallelism"]["replicas"] == 2
    assert 2 <= data["parallelism"]["window"] < 24


def test_fsd_run_never_loads_a_binary_model_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A binary layer folder is planned, cut and checked one layer at a time: the whole-network
    loader is never called, and workers stream their layers from the cut folder."""
    out = tmp_path / "net"
    assert cli.main(["generate", "--neurons", "1024", "--layers", "6", "--images", "30",
                     "--out", str(out)]) == 0  # fmt: skip

    forbid_whole_load(monkeypatch)
    folders: list[object] = []
    prepared: list[coordinator.Prepared] = []
    real_prepare = coordinator.prepare

    def prepare(*args: Any, **kwargs: Any) -> Any:
        folders.append(kwargs.get("folder"))
        prepared.append(real_prepare(*args, **kwargs))
        return prepared[-1]

    monkeypatch.setattr(fsd.run, "prepare_network", prepare)
    capsys.readouterr()
    code = cli.main(["run", "--data", str(out), "--workers", "2", "--partitions", "2", "--json"])
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and data["correct"] is True
    assert data["parallelism"]["partitions"] == 2
    assert len(folders) == 1 and folders[0] is not None  # cut into a folder, not into memory
    # one partition: the cut would be a copy of every layer, so workers cut their own from the
    # model's folder as they stream it (a 65536x1920 net is 33 GB)
    code = cli.main(["run", "--data", str(out), "--workers", "2", "--partitions", "1", "--json"])
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and one["correct"] is True and one["parallelism"]["replicas"] == 2
    assert folders[1] is None and prepared[1].shards is None and prepared[1].cutter is not None


#: plan() called with one hostile argument: each is an InputError naming it, never a TypeError,
#: ValueError, OverflowError, a silent bool-as-1, or a loop over range(10**30)
HOSTILE_PLAN: dict[str, tuple[dict[str, Any], str]] = {
    "workers-bool": ({"workers": True}, "workers must be a whole number"),
    "workers-zero": ({"workers": 0}, "workers must be a whole number"),
    "workers-negative": ({"workers": -4}, "workers must be a whole number"),
    "workers-float": ({"workers": 2.5}, "workers must be a whole number"),
    "workers-nan": ({"workers": math.nan}, "workers must be a whole number"),
    "workers-text": ({"workers": "4"}, "workers must be a whole number"),
    "workers-huge": ({"workers": 10**30}, "workers must be a whole number"),
    "neurons-float": ({"neurons": 4096.0}, "neurons must be a whole number"),
    "neurons-nan": ({"neurons": math.nan}, "neurons must be a whole number"),
    "depth-nan": ({"depth": math.nan}, "depth must be a whole number"),
    "depth-huge": ({"depth": 10**30}, "depth must be a whole number"),
    "edges-negative": ({"edges": -1}, "edges must be a whole number"),
    "edges-nan": ({"edges": math.nan}, "edges must be a whole number"),
    "edges-huge": ({"edges": 10**400}, "edges must be a whole number"),
    "images-bool": ({"images": True}, "images must be a whole number"),
    "images-nan": ({"images": math.nan}, "images must be a whole number"),
    "images-huge": ({"images": 10**400}, "images must be a whole number"),
    "memory-bool": ({"memory_mb": True}, "memory budget must be a number of MB"),
    "memory-zero": ({"memory_mb": 0}, "memory budget must be a number of MB"),
    "memory-negative": ({"memory_mb": -1.0}, "memory budget must be a number of MB"),
    "memory-nan": ({"memory_mb": math.nan}, "memory budget must be a number of MB"),
    "memory-inf": ({"memory_mb": math.inf}, "memory budget must be a number of MB"),
    "memory-text": ({"memory_mb": "1e3"}, "memory budget must be a number of MB"),
    "memory-huge": ({"memory_mb": 10**400}, "memory budget must be a number of MB"),
    "partitions-bool": ({"partitions": True}, "partitions must be a whole number"),
    "partitions-float": ({"partitions": 2.0}, "partitions must be a whole number"),
    "partitions-nan": ({"partitions": math.nan}, "partitions must be a whole number"),
    "partitions-zero": ({"partitions": 0}, "partitions must be a whole number"),
    "value-bytes-zero": ({"value_bytes": 0}, "value_bytes must be a whole number"),
    "value-bytes-negative": ({"value_bytes": -4}, "value_bytes must be a whole number"),
    "allowed-float": ({"allowed": [2.0]}, "allowed partitions must be a whole number"),
    "allowed-bool": ({"allowed": [True]}, "allowed partitions must be a whole number"),
    "cores-zero": ({"cores": 0}, "cores must be a whole number"),
    "cores-bool": ({"cores": True}, "cores must be a whole number"),
    "cores-float": ({"cores": 2.0}, "cores must be a whole number"),
}


@pytest.mark.parametrize("name", list(HOSTILE_PLAN))
def test_hostile_plan_arguments_are_input_errors(name: str) -> None:
    change, message = HOSTILE_PLAN[name]
    with pytest.raises(InputError, match=re.escape(message)):
        planner.choose(**{"workers": 4, "memory_mb": 2048, **NET, **change})


@pytest.mark.parametrize(
    ("size", "most"),
    [("neurons", store.MAX_NEURONS), ("depth", store.MAX_LAYERS), ("images", task.MAX_RUN_IMAGES)],
)
def test_plan_bounds_are_the_model_stores(size: str, most: int) -> None:
    """A stored model that passed the store's checks is never refused as a bad argument (the
    coordinator function would answer 400 for the store's model); one past the bound is."""
    base = {"workers": 4, "memory_mb": 1 << 24, **NET, "edges": 1 << 20}
    try:
        planner.choose(**{**base, size: np.int64(most)})  # numpy sizes, as callers pass them
    except InputError as exc:  # the model may not fit: that is no argument error
        assert "whole number" not in str(exc)
    with pytest.raises(InputError, match=f"{size} must be a whole number"):
        planner.choose(**{**base, size: most + 1})


def test_local_workers_are_forked_after_the_heap_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forked workers count their parent's resident pages as their own: what planning freed is
    returned to the system first (glibc malloc_trim), once per run, before any fork."""
    calls: list[int] = []
    real = coordinator._return_freed_memory

    def trim() -> None:
        calls.append(len(multiprocessing.active_children()))
        real()

    monkeypatch.setattr(coordinator, "_return_freed_memory", trim)
    network, images = generate(1024, 4, 20, seed=2)
    result = run(network, images.matrix, RunConfig(workers=2, partitions=1))
    assert result.parallelism["replicas"] == 2 and calls == [0]
