"""Warm workers keep what fits their window and stream the rest, against a real SeaweedFS.

A generated 24-layer net, pushed per layer; a worker whose window holds K + 2 of its 24 layers
keeps the first K warm (:func:`fsd.store.split_window`) and streams the others through a window
of 2. Store reads are counted on the real store (the method wrapped, nothing stood in for it);
the cache is bounded in layers, counted, not in RSS.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from fsd import auth, wire
from fsd.channels import COORDINATOR, open_channel
from fsd.channels.settings import channel_config
from fsd.coordinator import split_inputs
from fsd.embedded.s3 import S3Server
from fsd.functions import worker as worker_fn
from fsd.model import Images, Network
from fsd.model.generate import generate
from fsd.store import STREAM_WINDOW, ModelStore, ShardCache, StoreConfig, split_window
from fsd.task import ModelRef, WorkerTask
from fsd.worker import LayerFeed
from sameness import same

DEPTH = 24
BUCKET = "resident-test"
KEY = secrets.token_hex(20)


@pytest.fixture(scope="module")
def net() -> tuple[Network, Images]:
    return generate(1024, DEPTH, 40, seed=12)


class CountingStore(ModelStore):
    """The real model store, counting the objects it reads by key."""

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.keys: Counter[str] = Counter()

    def read(self, key: str, limit: int | None = None) -> bytes:
        self.keys[key] += 1
        return super().read(key, limit)

    def layers_read(self) -> int:
        return sum(n for key, n in self.keys.items() if "/layer-" in key)

    def headers_read(self) -> int:
        return sum(n for key, n in self.keys.items() if key.endswith("/header.npz"))


def _config(s3: S3Server) -> StoreConfig:
    return StoreConfig(
        s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, bucket=BUCKET
    )


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server, net: tuple[Network, Images]) -> ModelStore:
    store = ModelStore(_config(s3_server))
    store.push(net[0], "warm24", [2, 1], images=net[1])
    return store


def _walk(store: CountingStore, cache: ShardCache, worker: int, window: int) -> Any:
    """Load as a worker function does and take every layer in order; reads counted from 0."""
    store.keys.clear()
    loaded = cache.load(store, ModelRef("warm24", 2, "min-comm"), worker, "float32", window)
    if loaded.layers is not None:
        layers = [loaded.layers.layer(k)[0] for k in range(loaded.layers.depth)]
    else:
        assert loaded.shard is not None
        layers = loaded.shard.layers
    return loaded, layers


def test_split_window_keeps_all_but_the_streamed_window() -> None:
    assert split_window(24, 24) == (24, 0) and split_window(100, 24) == (24, 0)
    assert split_window(10, 24) == (10 - STREAM_WINDOW, STREAM_WINDOW)
    assert split_window(2, 24) == (0, 2) and split_window(1, 24) == (0, 1)
    for window in range(1, 30):
        resident, streamed = split_window(window, DEPTH)
        assert resident + streamed <= window and 0 <= resident <= DEPTH


def test_warm_worker_keeps_its_first_layers_and_streams_the_rest(
    s3_server: S3Server, pushed: ModelStore
) -> None:
    """First load streams every layer and keeps K = window - 2; the next downloads only the
    24 - K others (no header either); every layer equals the stored shard's."""
    ref = ModelRef("warm24", 2, "min-comm")
    whole = pushed.shard(ref, 1)
    store = CountingStore(_config(s3_server))
    cache = ShardCache(capacity=2)
    key = (ref, 1, "float32")

    cold, layers = _walk(store, cache, 1, window=10)
    same(layers, whole.layers)
    assert (cold.hit, cold.resident, cold.window) == (False, 8, STREAM_WINDOW)
    assert (store.layers_read(), store.headers_read(), cold.reads) == (DEPTH, 1, DEPTH)
    assert cache.held() == {key: 8}

    warm, layers = _walk(store, cache, 1, window=10)
    same(layers, whole.layers)
    assert (warm.hit, warm.resident) == (True, 8)
    assert (store.layers_read(), store.headers_read(), warm.reads) == (DEPTH - 8, 0, DEPTH - 8)
    assert cache.held() == {key: 8}

    # a smaller budget trims what is kept, at once; a larger one fills the difference once
    shrunk, layers = _walk(store, cache, 1, window=5)
    same(layers, whole.layers)
    assert cache.held() == {key: 3} and shrunk.hit and store.layers_read() == DEPTH - 3
    grown, layers = _walk(store, cache, 1, window=12)
    same(layers, whole.layers)
    assert not grown.hit and store.layers_read() == DEPTH - 3 and cache.held() == {key: 10}
    again, _ = _walk(store, cache, 1, window=12)
    assert again.hit and store.layers_read() == DEPTH - 10

    # a window that holds every layer keeps the whole shard; a later smaller one trims it
    full, layers = _walk(store, cache, 1, window=DEPTH)
    same(layers, whole.layers)
    assert full.shard is not None and cache.held() == {key: DEPTH}
    hit, _ = _walk(store, cache, 1, window=DEPTH + 5)
    assert hit.hit and store.layers_read() == 0 and hit.reads == 0
    _walk(store, cache, 1, window=6)
    assert cache.held() == {key: 4} and store.layers_read() == DEPTH


def test_the_cache_is_bounded_by_entries_and_each_entry_by_its_budget(
    s3_server: S3Server, pushed: ModelStore
) -> None:
    """Keyed by (model cut, worker, dtype): another worker, cut or dtype is another entry, the
    least recently used is evicted past the capacity, and no entry holds more than its window
    leaves after the streamed layers, while it fills as well as after."""
    store = CountingStore(_config(s3_server))
    cache = ShardCache(capacity=2)
    two, one = ModelRef("warm24", 2, "min-comm"), ModelRef("warm24", 1, "min-comm")
    _walk(store, cache, 1, window=9)
    cold, _ = _walk(store, cache, 1, window=2)  # nothing fits beside the streamed window
    assert (cold.hit, cold.resident, cold.reads, cache.held()) == (False, 0, DEPTH, {})
    seen: list[int] = []
    loaded = cache.load(store, two, 0, "float32", 7)
    assert loaded.layers is not None
    for k in range(DEPTH):
        loaded.layers.layer(k)
        seen.append(cache.held()[(two, 0, "float32")])
    assert seen == [min(k + 1, 5) for k in range(DEPTH)]  # filled as it streams, never past 5
    _walk(store, cache, 1, window=9)
    assert cache.held() == {(two, 0, "float32"): 5, (two, 1, "float32"): 7}
    loaded = cache.load(store, one, 0, "float32", 4)  # a new cut evicts the oldest entry
    assert loaded.layers is not None
    for k in range(DEPTH):
        loaded.layers.layer(k)
    assert cache.held() == {(two, 1, "float32"): 7, (one, 0, "float32"): 2}
    cache.load(store, two, 1, "float64", 9)  # another dtype is another key (and evicts)
    assert set(cache.held()) == {(one, 0, "float32"), (two, 1, "float64")}
    assert sum(cache.held().values()) <= 2 + 7


class Alive:
    """A supply's layers handed out and still referenced (kept in the cache or in the feed),
    counted by reference as they are made: the most there ever were."""

    def __init__(self, supply: Any) -> None:
        self.supply, self.now, self.most = supply, 0, 0
        self.inputs, self.depth, self.first = supply.inputs, supply.depth, supply.first
        self.lock = threading.Lock()

    def layer(self, k: int) -> Any:
        layer, after = self.supply.layer(k)
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        weakref.finalize(layer, self._gone)
        return layer, after

    def _gone(self) -> None:
        with self.lock:
            self.now -= 1


def full(feed: LayerFeed, held: int) -> None:
    """Wait until ``feed`` has fetched ``held`` layers the worker has not taken yet (its fetch
    thread then blocks on the window, or has fetched every layer)."""
    deadline = time.monotonic() + 30
    while len(feed._ready) < held:
        assert time.monotonic() < deadline, "the feed stopped fetching"
        time.sleep(0.005)


@pytest.mark.parametrize("window", [1, 2, 3, 10, 23])
def test_kept_and_streamed_layers_together_never_exceed_the_window(
    s3_server: S3Server, pushed: ModelStore, window: int
) -> None:
    """Through the worker's LayerFeed, cold then warm: the layer objects alive at once (kept in
    the cache, prefetched or computing, counted by reference, not RSS) never exceed the
    window, and the cache then holds exactly what the window leaves after the streamed ones."""
    store = CountingStore(_config(s3_server))
    cache = ShardCache(capacity=1)
    ref = ModelRef("warm24", 2, "min-comm")
    whole = pushed.shard(ref, 0)
    for _ in range(2):
        loaded = cache.load(store, ref, 0, "float32", window)
        assert loaded.layers is not None
        supply = Alive(loaded.layers)
        feed = LayerFeed(supply, loaded.window)
        try:
            for k in range(DEPTH):
                full(feed, min(feed.window, DEPTH - k))  # the worst case: prefetched all it may
                layer, _ = feed.get(k, timeout=30)
                same(layer, whole.layers[k])
                del layer
                feed.release()
        finally:
            feed.close()
        assert supply.most <= window
        assert sum(cache.held().values()) == split_window(window, DEPTH)[0]


def _env(servers_env: Mapping[str, str]) -> dict[str, str]:
    return {
        **servers_env,
        "FSD_S3_BUCKET": BUCKET,
        "FSD_RUN_KEY": KEY,
        "FSD_MODELS": "warm24",
        "FSD_SHARD_CACHE": "2",
        "PATH": "/usr/bin:/bin",
    }


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Objects the worker functions read from the real store, by key."""
    keys: Counter[str] = Counter()
    real = ModelStore.read

    def read(self: ModelStore, key: str, limit: int | None = None) -> bytes:
        keys[key] += 1
        return real(self, key, limit)

    monkeypatch.setattr(ModelStore, "read", read)
    worker_fn._shard_cache.cache_clear()  # a fresh instance
    yield keys
    worker_fn._shard_cache.cache_clear()


def _infer(
    env: dict[str, str], net: tuple[Network, Images], window: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One run of 2 worker-function invocations (in this process, signed as a coordinator
    signs them) on real NATS, this test playing the coordinator; the surviving images."""
    network, images = net
    ref = ModelRef("warm24", 2, "min-comm")
    owners0 = ModelStore(StoreConfig.from_env(env)).owners0(ref, network.neurons)
    cc = channel_config("nats", env=env)
    run = uuid.uuid4().bytes
    replies: list[dict[str, Any]] = [{}, {}]

    def invoke(p: int) -> None:
        task = WorkerTask(
            run, p, 2, images.matrix.shape[0], None, network.bias, network.ymax, "float32",
            cc, 30.0, model=ref, window=window,
        )  # fmt: skip
        body = auth.sign_invocation(KEY.encode(), task.to_json(), 60)
        status, replies[p] = worker_fn.handle_request(json.dumps(body).encode(), env)
        replies[p]["status"] = status

    threads = [threading.Thread(target=invoke, args=(p,)) for p in range(2)]
    for t in threads:
        t.start()
    with open_channel(cc, run, COORDINATOR) as channel:
        for p, arrays in enumerate(split_inputs(images.matrix, owners0, 2, "float32")):
            channel.send(wire.Message(wire.Header(wire.Kind.INPUT, run, 0, COORDINATOR, p), arrays))
        results = channel.expect(wire.Kind.RESULT, 0, [0, 1], 60)
        for t in threads:
            t.join()
        channel.purge_run([COORDINATOR, 0, 1])
    alive = sorted({int(r) + 1 for msg in results.values() for r in msg.arrays[0]})
    return np.array(alive, np.int64), replies


def test_a_warm_worker_function_downloads_only_the_layers_it_does_not_keep(
    servers_env: Mapping[str, str],
    pushed: ModelStore,
    net: tuple[Network, Images],
    reads: Counter[str],
) -> None:
    """Window 10 of 24 layers: the first invocation streams all 24 and keeps 8, the second
    downloads only the 16 others; exact both times."""
    env = _env(servers_env)
    truth = net[1].truth[DEPTH]

    def layers_read(worker: int) -> int:
        return sum(n for k, n in reads.items() if f"/worker-{worker}/layer-" in k)

    got, cold = _infer(env, net, window=10)
    np.testing.assert_array_equal(got, truth)
    assert [r["status"] for r in cold] == [200, 200], cold
    assert [layers_read(p) for p in range(2)] == [DEPTH, DEPTH]
    assert [(r["shard_cache"], r["resident"], r["layers_read"]) for r in cold] == [
        ("miss", 8, DEPTH)
    ] * 2
    reads.clear()
    got, warm = _infer(env, net, window=10)
    np.testing.assert_array_equal(got, truth)
    assert [layers_read(p) for p in range(2)] == [DEPTH - 8, DEPTH - 8]
    assert not [k for k in reads if k.endswith("header.npz")]
    assert [(r["shard_cache"], r["resident"], r["layers_read"]) for r in warm] == [
        ("hit", 8, DEPTH - 8)
    ] * 2
    held = worker_fn._shard_cache(2).held()
    assert sorted(held.values()) == [8, 8]
