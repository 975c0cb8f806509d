"""Model store: shards round-trip exactly, manifests, warm cache, names and missing models."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fsd.embedded.s3 import S3Server
from fsd.errors import InputError, ModelFormatError, ModelNotFound
from fsd.model.generate import generate
from fsd.partition import make_plan
from fsd.shard import build_shards, shard_from_bytes, shard_to_bytes
from fsd.store import MAX_MANIFEST, ModelStore, ShardCache, StoreConfig
from fsd.task import ModelRef
from sameness import forbid_whole_load, same


def _store(server: S3Server) -> ModelStore:
    return ModelStore(
        StoreConfig(
            server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            bucket="models-test",
        )
    )


def test_shard_bytes_round_trip_exactly() -> None:
    network, _ = generate(256, 5, 10, seed=2)
    plan = make_plan(network, 3, "min-comm")
    for shard in build_shards(network, plan, np.dtype(np.float32)):
        same(shard_from_bytes(shard_to_bytes(shard)), shard)


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
    same(store.shard(ref, 1), expected[1])
    stream = store.layers(ref, 2, "float32")  # streamed from S3, one layer object at a time
    same(stream.inputs, expected[2].inputs)
    for k in range(5):
        same(stream.layer(k)[0], expected[2].layers[k])
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


# -- what the store holds comes from outside: every read is checked ------------------------------


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server) -> ModelStore:
    """A tiny model cut for 3 workers, with images, in its own bucket."""
    network, images = generate(256, 3, 20, seed=4)
    store = _store(s3_server)
    store.push(network, "hostile", [3], ("min-comm",), images)
    return store


def _manifest(store: ModelStore) -> dict[str, object]:
    raw: dict[str, object] = json.loads(store.read("models/hostile/manifest.json"))
    return raw


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("bias", math.nan, "bias"),
        ("ymax", math.inf, "ymax"),
        ("neurons", True, "neurons"),
        ("neurons", -4, "neurons"),
        ("layers", 2.5, "layers"),
        ("dtype", "object", "dtype"),
        ("name", "other", "names model"),
        ("partitions", {"3-min-comm": {"workers": 0, "partition": "min-comm"}}, "workers"),
        ("partitions", {"9-min-comm": {"workers": 3, "partition": "min-comm"}}, "partition"),
        ("truth_layers", ["3"], "truth_layers"),
        ("surprise", 1, "fields"),
    ],
)
def test_malformed_manifest_fields_are_refused(
    pushed: ModelStore, field: str, value: object, match: str
) -> None:
    raw = {**_manifest(pushed), "name": "bad-manifest"}
    raw[field] = value
    pushed.write("models/bad-manifest/manifest.json", json.dumps(raw).encode())
    with pytest.raises(ModelFormatError, match=match):
        pushed.manifest("bad-manifest")


def test_deeply_nested_or_huge_manifest_is_refused(pushed: ModelStore) -> None:
    pushed.write("models/deep/manifest.json", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ModelFormatError, match="not JSON"):
        pushed.manifest("deep")
    pushed.write("models/huge/manifest.json", b" " * (MAX_MANIFEST + 1) + b"{}")
    with pytest.raises(ModelFormatError, match="larger than"):
        pushed.manifest("huge")


def _owners_case(store: ModelStore, owners: np.ndarray) -> ModelRef:
    buf = io.BytesIO()
    np.save(buf, owners)
    store.write("models/hostile/3-contiguous/owners0.npy", buf.getvalue())
    return ModelRef("hostile", 3, "contiguous")


@pytest.mark.parametrize(
    ("owners", "match"),
    [
        (np.full(256, 3, np.int32), "out of range"),  # worker 3 of 3
        (np.full(256, -1, np.int32), "negative"),
        (np.zeros(256, np.float32), "dtype"),
        (np.zeros(255, np.int32), "255 owners"),
    ],
)
def test_malformed_owners_are_refused(pushed: ModelStore, owners: np.ndarray, match: str) -> None:
    ref = _owners_case(pushed, owners)
    with pytest.raises(InputError, match=match):
        pushed.owners0(ref, neurons=256)


def _images_case(store: ModelStore, edit: dict[str, np.ndarray]) -> None:
    with np.load(io.BytesIO(store.read("models/hostile/images.npz"))) as z:
        arrays = {name: z[name] for name in z.files}
    one = {
        "rows": np.zeros(1, np.int32),
        "cols": np.zeros(1, np.int32),
        "vals": np.ones(1, np.float32),
    }
    arrays.update({**one, **edit})
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    store.write("models/bad-images/images.npz", buf.getvalue())


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"rows": np.array([-1], np.int32)}, "negative"),
        ({"cols": np.array([256], np.int32)}, "out of range"),
        ({"vals": np.array([np.nan], np.float32)}, "finite"),
        ({"shape": np.array([2**40, 256], np.int64)}, "out of bounds"),
        ({"truthxyz": np.array([1], np.int64)}, "truth<k>"),
        ({"truth3": np.array([0], np.int64)}, "negative"),
        ({"truth3": np.array([1.0])}, "float64"),
    ],
)
def test_malformed_images_are_refused(
    pushed: ModelStore, edit: dict[str, np.ndarray], match: str
) -> None:
    _images_case(pushed, edit)
    with pytest.raises(InputError, match=match):
        pushed.images("bad-images")


def test_store_serves_only_the_shard_asked_for(pushed: ModelStore) -> None:
    ref = ModelRef("hostile", 3, "min-comm")
    names = ["header.npz", *(f"layer-{k}.npz" for k in range(1, 4))]
    for name in names:  # worker 1's objects filed as worker 0's
        pushed.write(
            f"models/swapped/3-min-comm/worker-0/{name}", pushed.read(ref_key(ref, 1, name))
        )
    with pytest.raises(InputError, match="worker 1's header, not worker 0's"):
        pushed.shard(ModelRef("swapped", 3, "min-comm"), 0)
    # a 3-worker shard served for a 2-worker run names a peer that does not exist
    for name in names:
        pushed.write(
            f"models/swapped/2-min-comm/worker-0/{name}", pushed.read(ref_key(ref, 0, name))
        )
    with pytest.raises(InputError, match="must ascend, exist"):
        pushed.shard(ModelRef("swapped", 2, "min-comm"), 0)


def ref_key(ref: ModelRef, worker: int, name: str) -> str:
    return f"models/{ref.name}/{ref.workers}-{ref.partition}/worker-{worker}/{name}"


def test_cli_model_push_cuts_a_binary_folder_layer_by_layer(
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`fsd model push` of a generated (binary) model never loads it whole."""
    from fsd import cli

    out = tmp_path / "net"
    assert cli.main(["generate", "--neurons", "1024", "--layers", "4", "--images", "20",
                     "--out", str(out)]) == 0  # fmt: skip

    forbid_whole_load(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    where = ["--s3-endpoint", s3_server.endpoint, "--s3-bucket", "cli-models"]
    push = ["model", "push", str(out), "--name", "gen-bin", "--workers", "2"]
    assert cli.main([*push, *where]) == 0
    assert "gen-bin: 1024 x 4, cut for 2-min-comm" in capsys.readouterr().out
