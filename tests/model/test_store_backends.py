"""The model store is a seam like the transports (issue 19): a backend is one module plus one line
in :data:`fsd.stores.STORES`, and what is generic (the models' layout, the CLI's flags and
loggers, the operator's source download) reaches it only through that registry."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fsd import cli, stores
from fsd.embedded.s3 import S3Server
from fsd.errors import InputError, ModelNotFound
from fsd.k8s import source as sources
from fsd.k8s.errors import SourceError, StoreUnreachable
from fsd.k8s.spec import Source
from fsd.model.generate import generate
from fsd.partition import make_plan
from fsd.settings import Variable
from fsd.shard import build_shards
from fsd.store import FolderStore, ModelStore, StoreConfig, embedded
from fsd.stores import StoreBackend
from fsd.task import ModelRef
from sameness import same


class ToyObjects(StoreBackend):
    """A store outside fsd: one folder per bucket under ``TOY_STORE_DIR``."""

    VARIABLES = (
        Variable("TOY_STORE_DIR", "the toy store's folder", flag="--toy-dir", flag_help="toy"),
    )
    EMBEDDED = f"{__name__}:toy_server"
    LOGGERS = ("toystore",)

    @classmethod
    def from_env(cls, env: Mapping[str, str], flags: Mapping[str, object]) -> StoreConfig:
        where = flags.get("toy_dir") or env.get("TOY_STORE_DIR", "")
        return StoreConfig(endpoint=str(where), bucket="toys", kind="toy")

    @classmethod
    def to_env(cls, config: StoreConfig) -> dict[str, str]:
        return {"TOY_STORE_DIR": config.endpoint}

    @classmethod
    def secret_env(cls, config: StoreConfig) -> dict[str, str]:
        return {}

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        if not config.endpoint:
            raise InputError("the toy store needs TOY_STORE_DIR")
        self.root = Path(config.endpoint)
        self.folder = FolderStore(self.root / config.bucket)

    def prepare(self) -> None:
        (self.root / self.config.bucket).mkdir(parents=True, exist_ok=True)

    def write(self, key: str, data: bytes) -> None:
        self.folder.write(key, data)

    def read(self, key: str, limit: int | None = None) -> bytes:
        return self.folder.read(key, limit)

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        return self.folder.delete_prefix(prefix, last=last)

    def list_folder(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        root = self.root / bucket
        if not root.is_dir():
            raise ModelNotFound("no such bucket")
        found = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in root.rglob("*")]
        return sorted((k, n) for k, n in found if k.startswith(prefix) and (root / k).is_file())

    def download(self, bucket: str, key: str, target: Path) -> None:
        shutil.copyfile(self.root / bucket / key, target)


@contextmanager
def toy_server(config: StoreConfig) -> Iterator[StoreConfig]:
    """The toy's "embedded server": a folder that lasts as long as the context."""
    yield StoreConfig(endpoint=str(Path(config.endpoint or ".") / "started"), kind="toy")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(stores.STORES, "toy", f"{__name__}:ToyObjects")  # type: ignore[index]


def test_an_unknown_store_names_the_choices() -> None:
    with pytest.raises(InputError, match=r"^unknown model store 'nope'; choose one of s3$"):
        StoreConfig.from_env({}, kind="nope")
    with pytest.raises(InputError, match=r"^unknown model store 'nope'; choose one of s3$"):
        ModelStore(StoreConfig("http://127.0.0.1:9", kind="nope"))


@pytest.mark.usefixtures("toy")
def test_a_toy_store_plugs_in_by_one_registry_line(tmp_path: Path) -> None:
    """One line in STORES: the store's config, variables and flags, loggers and embedded
    server follow, and a model pushed to it is served back exactly."""
    config = StoreConfig.from_env({"TOY_STORE_DIR": str(tmp_path)}, kind="toy")
    assert (config.kind, config.endpoint, config.to_env()) == (
        "toy",
        str(tmp_path),
        {"TOY_STORE_DIR": str(tmp_path)},
    )
    assert ToyObjects.VARIABLES[0] in StoreConfig.VARIABLES
    assert "toystore" in cli._loggers()
    assert f"{__name__}:toy_server" == config.EMBEDDED
    with embedded(config) as started:
        assert started.endpoint == str(tmp_path / "started")

    network, images = generate(256, 3, 8, seed=5)
    store = ModelStore(config)
    store.prepare()
    manifest = store.push(network, "toy1", [2], images=images)
    assert store.manifest("toy1") == manifest
    assert (tmp_path / "toys" / "models" / "toy1" / "manifest.json").is_file()
    expected = build_shards(network, make_plan(network, 2, "min-comm"), np.dtype(np.float32))
    same(store.shard(ModelRef("toy1", 2, "min-comm"), 1), expected[1])
    assert store.delete_prefix("models/toy1/") > 0
    with pytest.raises(ModelNotFound):
        store.manifest("toy1")


@pytest.mark.usefixtures("toy")
def test_the_operator_downloads_a_source_through_the_store_backend(tmp_path: Path) -> None:
    """k8s/source.py holds the layout and the budget; the bytes come from the store's backend,
    whichever it is, and its "not there" is the source's fault, as for S3."""
    folder = tmp_path / "store" / "gc" / "net" / "neuron16"
    folder.mkdir(parents=True)
    (folder / "n16-l1.tsv").write_text("1\t2\t0.5\n")
    (folder / "notes.txt").write_text("not the layout")
    backend = ModelStore(StoreConfig(str(tmp_path / "store"), kind="toy")).backend
    dest = tmp_path / "dest"
    fetched = sources.fetch(backend, Source("gc", "net"), dest, max_bytes=1 << 20)
    assert (fetched.neurons, fetched.files) == ((16,), 1)
    assert (dest / "neuron16" / "n16-l1.tsv").read_text() == "1\t2\t0.5\n"
    with pytest.raises(SourceError, match=r"^s3://nothere/net: no such bucket$") as caught:
        sources.fetch(backend, Source("nothere", "net"), dest, max_bytes=1 << 20)
    assert caught.value.reason == "SourceNotFound"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_the_s3_stores_source_failures_keep_their_messages(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """The operator's words for an S3 source that is missing, refused or unreachable, now said
    by the s3 backend (fsd.stores.s3) and prefixed by the operator."""

    def backend(endpoint: str = s3_server.endpoint, secret_key: str = "") -> StoreBackend:
        config = StoreConfig(
            endpoint,
            access_key=s3_server.access_key,
            secret_key=secret_key or s3_server.secret_key,
        )
        return ModelStore(config).backend

    source = Source("h11-no-such-bucket", "net")
    with pytest.raises(SourceError, match=r"^s3://h11-no-such-bucket/net: no such bucket$") as nf:
        sources.fetch(backend(), source, tmp_path, max_bytes=1 << 20)
    assert nf.value.reason == "SourceNotFound"
    refused = r"^s3://fsd/net: access refused \((AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch)\): check the S3 keys$"  # noqa: E501
    with pytest.raises(StoreUnreachable, match=refused):
        sources.fetch(backend(secret_key="wrong"), Source("fsd", "net"), tmp_path, max_bytes=1)
    down = backend(endpoint=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(StoreUnreachable) as unreachable:
        sources.fetch(down, Source("fsd", "net"), tmp_path, max_bytes=1)
    assert re.fullmatch(r"s3://fsd/net: S3 endpoint unreachable: \w+", str(unreachable.value))
    assert unreachable.value.temporary
