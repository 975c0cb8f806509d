"""Model store: shards round-trip exactly, manifests, warm cache, names and missing models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fsd.channels import ChannelConfig
from fsd.errors import InputError
from fsd.model.generate import generate
from fsd.partition import make_plan
from fsd.services import S3Server
from fsd.shard import build_shards, shard_from_bytes, shard_to_bytes
from fsd.store import ModelNotFound, ModelStore, ShardCache
from fsd.task import ModelRef


def _store(server: S3Server) -> ModelStore:
    return ModelStore(
        ChannelConfig(
            "s3",
            server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            bucket="models-test",
        )
    )


def _same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            _same(getattr(a, name), getattr(b, name))
    else:
        assert a == b


def test_shard_bytes_round_trip_exactly() -> None:
    network, _ = generate(256, 5, 10, seed=2)
    plan = make_plan(network, 3, "min-comm")
    for shard in build_shards(network, plan, np.dtype(np.float32)):
        _same(shard_from_bytes(shard_to_bytes(shard)), shard)


def test_garbage_is_not_a_shard() -> None:
    with pytest.raises(InputError, match="not a valid fsd shard"):
        shard_from_bytes(b"PK\x03\x04 definitely not an npz")


def test_push_then_read_back(s3_server: S3Server) -> None:
    network, images = generate(256, 5, 30, seed=3)
    store = _store(s3_server)
    manifest = store.push(network, "tiny", [2, 3], ("min-comm", "contiguous"), images)
    assert store.manifest("tiny") == manifest
    assert manifest.has(3, "contiguous") and not manifest.has(4, "min-comm")
    ref = ModelRef("tiny", 3, "min-comm")
    plan = make_plan(network, 3, "min-comm")
    np.testing.assert_array_equal(store.owners0(ref), plan.owners[0])
    expected = build_shards(network, plan, np.dtype(np.float32))
    _same(store.shard(ref, 1), expected[1])
    back = store.images("tiny", first=10)
    assert back.matrix.shape == (10, 256)
    np.testing.assert_array_equal(back.matrix.toarray(), images.matrix[:10].toarray())
    assert back.truth[5].tolist() == [c for c in images.truth[5] if c <= 10]

    cache = ShardCache(capacity=1)
    first, hit1 = cache.get(store, ref, 0)
    again, hit2 = cache.get(store, ref, 0)
    assert (hit1, hit2) == (False, True) and again is first
    cache.get(store, ref, 1)  # evicts worker 0's shard (capacity 1)
    assert cache.get(store, ref, 0)[1] is False


def test_unknown_model_and_bad_names(s3_server: S3Server) -> None:
    store = _store(s3_server)
    with pytest.raises(ModelNotFound, match="unknown model"):
        store.manifest("no-such-model")
    for bad in ("", "../etc", "a/b", "x" * 65, ".hidden"):
        with pytest.raises(InputError, match="invalid model name"):
            store.manifest(bad)


def test_cli_model_push_and_show(
    s3_server: S3Server,
    shared_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fsd.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    where = ["--s3-endpoint", s3_server.endpoint, "--s3-bucket", "cli-models"]
    args = [
        "model",
        "push",
        str(shared_dir),
        "--name",
        "gc-cli",
        "--workers",
        "2",
        "4",
        "--layers",
        "6",
    ]
    assert main([*args, *where]) == 0
    assert "cut for 2-min-comm, 4-min-comm" in capsys.readouterr().out
    assert main(["model", "show", "gc-cli", *where]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["layers"] == 6 and shown["images"] == 2000
    assert main(["model", "show", "missing", *where]) == 1
    assert main([*args[:5], "--workers", "0", *where]) == 2
