"""Streamed models: planning and cutting one layer at a time, per-layer store objects, and
workers that hold at most their prefetch window of layer shards, exact for every window."""

from __future__ import annotations

import dataclasses
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from fsd import auth, reference, wire
from fsd.channels import COORDINATOR, ChannelConfig, embedded, open_channel
from fsd.coordinator import split_inputs
from fsd.errors import InputError
from fsd.model import Network
from fsd.model.generate import generate
from fsd.partition import PARTITIONERS, make_plan
from fsd.shard import LayerShard, Sends, build_shards, iter_layer_shards
from fsd.store import FolderStore, StoredLayers
from fsd.task import ModelRef, WorkerTask
from fsd.worker import LayerFeed, run_worker
from sameness import same

DTYPE = np.dtype(np.float32)


class Alive:
    """How many of the objects it was shown are still alive, and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.lock = threading.Lock()

    def add(self, obj: object) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        weakref.finalize(obj, self._gone)

    def _gone(self) -> None:
        with self.lock:
            self.now -= 1


class Source:
    """A network read layer by layer (not a Network): counts how many of its layers are alive."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.neurons, self.depth = network.neurons, network.depth
        self.bias, self.ymax = network.bias, network.ymax
        self.reads: list[int] = []
        self.alive = Alive()

    @property
    def most_alive(self) -> int:
        return self.alive.most

    def layer(self, k: int) -> sp.csr_matrix:
        w = self.network.layers[k - 1].copy()  # a fresh object per read, as a file would give
        self.reads.append(k)
        self.alive.add(w)
        return w

    def edges(self) -> int:
        return self.network.edges


@pytest.fixture(scope="module")
def small() -> tuple[Network, Any]:
    return generate(1024, 5, 60, seed=7)


@pytest.mark.parametrize("method", PARTITIONERS)
def test_streamed_plan_and_shards_equal_whole_ones_holding_one_layer(
    small: tuple[Network, Any], method: str
) -> None:
    network, _ = small
    whole_plan = make_plan(network, 3, method)
    source = Source(network)
    plan = make_plan(source, 3, method)
    assert source.reads == [1, 2, 3, 4, 5]  # each layer read once, in order
    assert source.most_alive == 1  # never more than one layer in memory
    same(plan, whole_plan)
    whole = build_shards(network, whole_plan, DTYPE)
    source = Source(network)
    for k, cut in iter_layer_shards(source, plan, DTYPE):
        for p, layer in enumerate(cut):
            same(layer, whole[p].layers[k])
    assert source.reads == [1, 2, 3, 4, 5] and source.most_alive == 1
    same(build_shards(Source(network), plan, DTYPE), whole)


def _folder(tmp_path: Path, network: Network, workers: int, method: str) -> FolderStore:
    store = FolderStore(tmp_path / "store")
    store.push(Source(network), "net", [workers], (method,))
    return store


@pytest.mark.parametrize("method", PARTITIONERS)
def test_folder_store_round_trip_per_layer(
    tmp_path: Path, small: tuple[Network, Any], method: str
) -> None:
    network, _ = small
    store = _folder(tmp_path, network, 3, method)
    ref = ModelRef("net", 3, method)
    names = sorted(p.name for p in (tmp_path / f"store/models/net/3-{method}/worker-2").iterdir())
    assert names == ["header.npz", *(f"layer-{k}.npz" for k in range(1, 6))]
    whole = build_shards(network, make_plan(network, 3, method), DTYPE)
    assert store.manifest("net").layers == 5
    for p in range(3):
        same(store.shard(ref, p), whole[p])
        stream = store.layers(ref, p, "float32")
        for k in range(5):
            layer, after = stream.layer(k)
            same(layer, whole[p].layers[k])
            same(after, whole[p].layers[k + 1].sends if k < 4 else [])


def test_weights_are_stored_once(tmp_path: Path, small: tuple[Network, Any]) -> None:
    """Each layer object keeps the weights by rows only (the worker derives the columns)."""
    network, _ = small
    store = _folder(tmp_path, network, 1, "contiguous")
    with np.load(tmp_path / "store/models/net/1-contiguous/worker-0/layer-1.npz") as z:
        rows = [f"0.{side}{n}" for side in ("local", "remote") for n in range(3)]
        assert sorted(z.files) == [*rows, "meta"]
        assert len(z["0.local2"]) == network.layers[0].nnz and len(z["0.remote2"]) == 0
    assert store.shard(ModelRef("net", 1, "contiguous"), 0).layers[0].parts[0].w_local[5].size


@pytest.fixture
def pushed(tmp_path: Path, small: tuple[Network, Any]) -> FolderStore:
    return _folder(tmp_path, small[0], 3, "min-comm")


def _key(worker: int, name: str, model: str = "net") -> str:
    return f"models/{model}/3-min-comm/worker-{worker}/{name}"


def _stream_all(store: FolderStore, worker: int, model: str = "net", workers: int = 3) -> None:
    stream = store.layers(ModelRef(model, workers, "min-comm"), worker)
    for k in range(stream.depth):
        stream.layer(k)


def _copy_model(store: FolderStore, workers: int = 3) -> None:
    for p in range(3):
        for name in ["header.npz", *(f"layer-{k}.npz" for k in range(1, 6))]:
            key = f"models/bad/{workers}-min-comm/worker-{p}/{name}"
            store.write(key, store.read(_key(p, name)))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ((1, "layer-2.npz", "layer-2.npz"), "worker 1's layer 1"),  # another worker's layer
        ((0, "layer-3.npz", "layer-2.npz"), "this is worker 0's layer 2"),  # another layer
        ((1, "header.npz", "header.npz"), "worker 1's header"),
        ((0, "layer-5.npz", "layer-4.npz"), "layer 3"),
    ],
)
def test_swapped_layer_objects_are_refused(
    pushed: FolderStore, edit: tuple[int, str, str], match: str
) -> None:
    _copy_model(pushed)
    src_worker, src, dst = edit
    pushed.write(_key(0, dst, "bad"), pushed.read(_key(src_worker, src)))
    with pytest.raises(InputError, match=match):
        _stream_all(pushed, 0, "bad")


@pytest.mark.parametrize("name", ["header.npz", "layer-1.npz", "layer-3.npz", "layer-5.npz"])
def test_truncated_layer_objects_are_refused(pushed: FolderStore, name: str) -> None:
    _copy_model(pushed)
    good = pushed.read(_key(1, name))
    pushed.write(_key(1, name, "bad"), good[: len(good) // 2])
    with pytest.raises(InputError, match="not a valid fsd"):
        _stream_all(pushed, 1, "bad")


def test_layer_objects_for_more_workers_are_refused(pushed: FolderStore) -> None:
    """A 3-worker cut served as a 2-worker one names a peer that does not exist."""
    _copy_model(pushed, workers=2)
    with pytest.raises(InputError, match="exist"):
        _stream_all(pushed, 0, "bad", workers=2)


class Counting:
    """A supply that counts the layer shards alive (by reference, not by the feed's word)."""

    def __init__(self, inner: StoredLayers) -> None:
        self.inner = inner
        self.inputs, self.depth, self.first = inner.inputs, inner.depth, inner.first
        self.alive = Alive()

    @property
    def most_alive(self) -> int:
        return self.alive.most

    def layer(self, k: int) -> tuple[LayerShard, Sends]:
        layer, after = self.inner.layer(k)
        self.alive.add(layer)
        return layer, after


@pytest.mark.parametrize("window", [1, 2, 5])
def test_feed_holds_at_most_its_window(pushed: FolderStore, window: int) -> None:
    ref = ModelRef("net", 3, "min-comm")
    supply = Counting(pushed.layers(ref, 1))
    feed = LayerFeed(supply, window)
    whole = pushed.shard(ref, 1)
    try:
        for k in range(supply.depth):
            layer, _ = feed.get(k, timeout=30)
            same(layer, whole.layers[k])
            assert feed.held <= window
            del layer
            feed.release()
    finally:
        feed.close()
    assert 1 <= feed.max_held <= window
    assert supply.most_alive <= window


def _run_streamed(
    store: FolderStore, network: Network, images: sp.csr_matrix, window: int, workers: int
) -> tuple[np.ndarray, list[Counting]]:
    """Workers in threads streaming from ``store``; returns the surviving images (1-based)."""
    ref = ModelRef("net", workers, "min-comm")
    run = uuid.uuid4().bytes
    supplies = [Counting(store.layers(ref, p, "float32")) for p in range(workers)]
    owners0 = store.owners0(ref, network.neurons)
    config = ChannelConfig("local", secret=auth.new_secret())
    with embedded(config) as cc:
        failures: list[BaseException] = []

        def work(p: int) -> None:
            task = WorkerTask(
                run, p, workers, images.shape[0], None, network.bias, network.ymax,
                "float32", cc, 30.0, window=window, layers=supplies[p],
            )  # fmt: skip
            try:
                with open_channel(cc, run, p) as channel:
                    run_worker(task, channel)
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(p,)) for p in range(workers)]
        for t in threads:
            t.start()
        with open_channel(cc, run, COORDINATOR) as channel:
            for p, arrays in enumerate(split_inputs(images, owners0, workers, "float32")):
                header = wire.Header(wire.Kind.INPUT, run, 0, COORDINATOR, p)
                channel.send(wire.Message(header, arrays))
            results = channel.expect(wire.Kind.RESULT, 0, list(range(workers)), 60)
            for t in threads:
                t.join()
            channel.purge_run([COORDINATOR, *range(workers)])
    assert not failures, failures
    alive = sorted({int(r) + 1 for msg in results.values() for r in msg.arrays[0]})
    return np.array(alive, np.int64), supplies


@pytest.mark.parametrize("window", [1, 2, 5])
def test_streaming_workers_are_exact_within_their_window(
    pushed: FolderStore, small: tuple[Network, Any], window: int
) -> None:
    network, images = small
    expected = reference.categories(reference.infer(network, images.matrix))
    got, supplies = _run_streamed(pushed, network, images.matrix, window, 3)
    np.testing.assert_array_equal(got, expected)
    assert all(s.most_alive <= window for s in supplies)


def test_window_is_validated_and_travels_only_when_set() -> None:
    task = WorkerTask(
        b"r" * 16, 0, 1, 1, None, -0.3, 32.0, "float32", ChannelConfig("nats"),
        model=ModelRef("net", 1, "min-comm"),
    )  # fmt: skip
    bad: Any
    for bad in (0, -1, 1025, True, 2.0):
        with pytest.raises(InputError, match="window"):
            dataclasses.replace(task, window=bad)
    assert "window" not in task.to_json()  # the schema's old bodies stay valid
    body = dataclasses.replace(task, window=3).to_json()
    assert body["window"] == 3
    assert WorkerTask.from_json(body, ChannelConfig("nats")).window == 3


def test_prepare_streams_into_a_folder(tmp_path: Path, small: tuple[Network, Any]) -> None:
    """prepare with a folder holds no shard: each worker's layers come from the folder."""
    from fsd.coordinator import RunConfig, prepare

    network, _ = small
    config = RunConfig(workers=3, partition="min-comm")
    source = Source(network)
    prepared = prepare(source, config, folder=tmp_path / "cut", window=2)
    assert prepared.shards is None and prepared.window == 2
    assert source.most_alive == 1 and prepared.edges == network.edges
    whole = build_shards(network, make_plan(network, 3, "min-comm"), DTYPE)
    np.testing.assert_array_equal(prepared.owners0, make_plan(network, 3, "min-comm").owners[0])
    for p in range(3):
        stream = prepared.layers(p)
        assert stream is not None
        for k in range(network.depth):
            same(stream.layer(k)[0], whole[p].layers[k])
    with pytest.raises(InputError, match="window"):
        prepare(network, config, folder=tmp_path / "cut2", window=-1)
    # 0: the config's window, else every layer
    assert prepare(network, config, folder=tmp_path / "cut3", window=0).window == network.depth


def test_feed_hands_a_bad_layer_to_the_worker_as_its_error(pushed: FolderStore) -> None:
    """A layer refused by the fetch thread surfaces in the worker, at that layer, not as a hang."""
    _copy_model(pushed)
    good = pushed.read(_key(2, "layer-3.npz"))
    pushed.write(_key(2, "layer-3.npz", "bad"), good[:100])
    feed = LayerFeed(pushed.layers(ModelRef("bad", 3, "min-comm"), 2), 2)
    try:
        for k in range(2):
            feed.get(k, timeout=30)
            feed.release()
        with pytest.raises(InputError, match="worker 2's layer 2"):
            feed.get(2, timeout=30)
    finally:
        feed.close()


@pytest.mark.parametrize("workers", [1, 3])
def test_prepare_without_folder_cuts_each_workers_layers_from_the_source(
    tmp_path: Path, small: tuple[Network, Any], workers: int
) -> None:
    """A streamed source and no folder: nothing is cut ahead and nothing copied; each worker's
    supply cuts its layers from the source as it asks for them, the same as a whole cut."""
    from fsd.coordinator import RunConfig, prepare

    network, _ = small
    config = RunConfig(workers=workers, partition="min-comm")
    source = Source(network)
    prepared = prepare(source, config, window=2)
    assert prepared.shards is None and prepared.folder is None and prepared.window == 2
    # every layer read once, one at a time, before any worker starts: checked up front (with
    # one partition by a pass of its own, as the plan reads none; with more, by the plan)
    assert source.reads == list(range(1, network.depth + 1)) and source.most_alive == 1
    source.reads.clear()
    plan = make_plan(network, workers, "min-comm")
    whole = build_shards(network, plan, DTYPE)
    for p in range(workers):
        supply = prepared.layers(p)
        assert supply is not None
        np.testing.assert_array_equal(supply.inputs, whole[p].inputs)
        assert supply.depth == network.depth
        for k in range(network.depth):
            layer, after = supply.layer(k)
            same(layer, whole[p].layers[k])
            expected = whole[p].layers[k + 1].sends if k + 1 < network.depth else []
            same(after, expected)
    assert source.most_alive <= workers  # a layer is dropped once it is cut


def test_a_one_partition_plan_reads_no_layer(small: tuple[Network, Any]) -> None:
    network, _ = small
    source = Source(network)
    for method in PARTITIONERS:
        plan = make_plan(source, 1, method)
        assert plan.depth == network.depth and plan.total_volume == 0
        assert all(not (owners != 0).any() for owners in plan.owners)
    assert source.reads == []
