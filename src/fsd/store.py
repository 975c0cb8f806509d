"""The model store: networks cut into per-worker shards ahead of time, kept in an object store.

``fsd model push`` partitions a network once for each requested worker count and uploads, under
``models/<name>/`` in the bucket:

- ``manifest.json``: sizes, bias, cap, edges, and the partitions available;
- ``W<workers>-<partition>/owners0.npy``: who owns each input pixel (the coordinator splits inputs);
- ``W<workers>-<partition>/shard-<p>.npz``: worker p's shard, the only thing worker p downloads;
- ``images.npz`` (optional): inputs and truth, so a request can name stored images.

Everything is arrays (npz/npy read with ``allow_pickle=False``) or JSON: nothing in the store is
executed. Warm function instances keep shards in a bounded LRU (:class:`ShardCache`), as FaaS
platforms reuse warm instances.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from fsd.channels.base import ChannelConfig
from fsd.errors import ChannelError, FsdError, InputError
from fsd.model import Images, Network
from fsd.partition import make_plan
from fsd.s3client import delete_prefix, minio_client
from fsd.shard import Shard, build_shards, shard_from_bytes, shard_to_bytes
from fsd.task import ModelRef

log = logging.getLogger(__name__)

PREFIX = "models"


class ModelNotFound(FsdError):
    """The store has no such model (or not cut for the requested workers/partition)."""


@dataclass
class Manifest:
    name: str
    neurons: int
    layers: int
    bias: float
    ymax: float
    edges: int
    dtype: str
    partitions: dict[str, dict[str, Any]] = field(default_factory=dict)  # "W-partition" -> info
    images: int = 0  # stored images (0: none)
    truth_layers: list[int] = field(default_factory=list)

    @staticmethod
    def key(workers: int, partition: str) -> str:
        return f"{workers}-{partition}"

    def has(self, workers: int, partition: str) -> bool:
        return self.key(workers, partition) in self.partitions


def _client(config: ChannelConfig) -> Minio:
    if not config.address:
        raise InputError("the model store needs an S3 endpoint (--s3-endpoint or FSD_S3_ENDPOINT)")
    retries = urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504])
    client, _ = minio_client(config, maxsize=8, read_timeout=60.0, retries=retries)
    return client


class ModelStore:
    """Models in ``config.bucket`` on the S3 endpoint of ``config`` (an ``s3`` ChannelConfig)."""

    def __init__(self, config: ChannelConfig) -> None:
        self.config = config
        self.client = _client(config)
        self.bucket = config.bucket
        self._bucket_ready = False

    # -- raw objects ---------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> None:
        """Put one object (the bucket is created on the first write if it does not exist)."""
        try:
            if not self._bucket_ready:
                if not self.client.bucket_exists(self.bucket):
                    self.client.make_bucket(self.bucket, location=self.config.region)
                self._bucket_ready = True
            self.client.put_object(self.bucket, key, io.BytesIO(data), len(data))
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ChannelError(f"model store: cannot write {key}: {exc}") from None

    def read(self, key: str) -> bytes:
        """One object's bytes; ModelNotFound when it (or the bucket) does not exist."""
        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ModelNotFound(f"model store has no {key}") from None
            raise ChannelError(f"model store: cannot read {key}: {exc.code}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ChannelError(f"model store unreachable reading {key}: {exc}") from None
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        """Delete every object under ``prefix``; how many there were (0: no bucket)."""
        try:
            removed, failed = delete_prefix(self.client, self.bucket, prefix, last=last)
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return 0
            raise ChannelError(f"model store: cannot remove {prefix}: {exc.code}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise ChannelError(f"model store unreachable removing {prefix}: {exc}") from None
        if failed:
            raise ChannelError(f"model store: cannot remove {prefix}: {failed[0]}")
        return removed

    # -- models --------------------------------------------------------------------------------

    def push(
        self,
        network: Network,
        name: str,
        workers: Sequence[int],
        partitions: Sequence[str] = ("min-comm",),
        images: Images | None = None,
        dtype: str = "float32",
    ) -> Manifest:
        """Cut ``network`` for every (workers, partition) and upload it all."""
        _check_name(name)
        manifest = Manifest(
            name,
            network.neurons,
            network.depth,
            float(network.bias),
            float(network.ymax),
            network.edges,
            dtype,
        )
        for w in workers:
            for method in partitions:
                t0 = time.perf_counter()
                plan = make_plan(network, w, method)
                shards = build_shards(network, plan, np.dtype(dtype))
                base = f"{PREFIX}/{name}/{Manifest.key(w, method)}"
                self.write(f"{base}/owners0.npy", _npy(plan.owners[0].astype(np.int32)))
                for shard in shards:
                    self.write(f"{base}/shard-{shard.worker}.npz", shard_to_bytes(shard))
                manifest.partitions[Manifest.key(w, method)] = {
                    "workers": w,
                    "partition": method,
                    "planned_volume": plan.total_volume,
                    "plan_seconds": round(time.perf_counter() - t0, 3),
                }
                log.info("pushed %s for %d workers (%s)", name, w, method)
        if images is not None:
            coo = sp.coo_matrix(images.matrix)
            truth = {f"truth{k}": np.asarray(v, np.int64) for k, v in images.truth.items()}
            buf = io.BytesIO()
            np.savez(
                buf,
                shape=np.array(coo.shape, np.int64),
                rows=coo.row.astype(np.int32),
                cols=coo.col.astype(np.int32),
                vals=coo.data.astype(np.float32),
                **truth,  # type: ignore[arg-type]
            )
            self.write(f"{PREFIX}/{name}/images.npz", buf.getvalue())
            manifest.images = int(images.matrix.shape[0])
            manifest.truth_layers = sorted(int(k) for k in images.truth)
        self.write(f"{PREFIX}/{name}/manifest.json", json.dumps(asdict(manifest)).encode())
        return manifest

    def manifest(self, name: str) -> Manifest:
        _check_name(name)
        try:
            raw = json.loads(self.read(f"{PREFIX}/{name}/manifest.json"))
            return Manifest(**raw)
        except ModelNotFound:
            raise ModelNotFound(f"unknown model {name!r}") from None
        except (TypeError, ValueError) as exc:
            raise ChannelError(f"model {name!r} has a malformed manifest: {exc}") from None

    def owners0(self, ref: ModelRef) -> np.ndarray:
        data = self.read(
            f"{PREFIX}/{ref.name}/{Manifest.key(ref.workers, ref.partition)}/owners0.npy"
        )
        owners: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
        return owners

    def shard(self, ref: ModelRef, worker: int) -> Shard:
        key = f"{PREFIX}/{ref.name}/{Manifest.key(ref.workers, ref.partition)}/shard-{worker}.npz"
        return shard_from_bytes(self.read(key))

    def images(self, name: str, first: int | None = None) -> Images:
        data = self.read(f"{PREFIX}/{name}/images.npz")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            nrows, ncols = (int(x) for x in z["shape"])
            m = sp.csr_matrix((z["vals"], (z["rows"], z["cols"])), shape=(nrows, ncols))
            truth = {int(k[5:]): z[k] for k in z.files if k.startswith("truth")}
        if first is not None:
            m = m[:first]
            truth = {k: v[v <= first] for k, v in truth.items()}
        return Images(m, truth)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _check_name(name: str) -> None:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name.startswith("."):
        raise InputError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")


class ShardCache:
    """A bounded LRU of shards, kept by a warm function instance between invocations."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[ModelRef, int], Shard] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, store: ModelStore, ref: ModelRef, worker: int) -> tuple[Shard, bool]:
        """The shard and whether it was already here (True: a warm hit, nothing downloaded)."""
        key = (ref, worker)
        with self._lock:
            shard = self._items.get(key)
            if shard is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return shard, True
        shard = store.shard(ref, worker)
        with self._lock:
            self._items[key] = shard
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            self.misses += 1
        return shard, False
