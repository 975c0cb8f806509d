"""The model store: networks cut into per-worker, per-layer shards ahead of time.

``fsd model push`` partitions a network once for each requested worker count and uploads, under
``models/<name>/`` in the bucket (or a local folder, :class:`FolderStore`):

- ``manifest.json``: sizes, bias, cap, edges, and the partitions available;
- ``<workers>-<partition>/owners0.npy``: who owns each input pixel (the coordinator splits inputs);
- ``<workers>-<partition>/worker-<p>/header.npz``: worker p's inputs, depth and first sends;
- ``<workers>-<partition>/worker-<p>/layer-<k>.npz``: worker p's part of layer k (1-based),
  weights stored once; a worker streams these one at a time (:meth:`Objects.layers`);
- ``images.npz`` (optional): inputs and truth, so a request can name stored images.

Pushing reads the network one layer at a time (:class:`fsd.partition.LayerSource`): planning and
cutting hold one layer, never the network.

Everything is arrays (npz/npy read with ``allow_pickle=False``) or JSON: nothing in the store is
executed. Warm function instances keep shards in a bounded LRU (:class:`ShardCache`), as FaaS
platforms reuse warm instances: a whole shard when the worker's window holds it, else its first
layers, the rest streamed on every invocation (:func:`split_window`).
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import stores
from fsd.errors import InputError, ModelFormatError, ModelNotFound, StoreError
from fsd.model import Images, Network
from fsd.model.network import DTYPES
from fsd.partition import PARTITIONERS, LayerSource, as_layers, make_plan
from fsd.planner import MIN_WINDOW
from fsd.shard import (
    LayerReader,
    LayerShard,
    Sends,
    Shard,
    ShardCutter,
    header_from_bytes,
    header_to_bytes,
    layer_to_bytes,
    shard_from_bytes,
)
from fsd.stores import StoreConfig as StoreConfig  # noqa: PLC0414 (read from here too)
from fsd.task import MAX_RUN_IMAGES, ModelRef
from fsd.untrusted import (
    check_finite,
    check_index,
    describe,
    json_float,
    json_int,
    read_npy,
    read_npz,
)

log = logging.getLogger(__name__)

PREFIX = "models"


def embedded(config: StoreConfig) -> AbstractContextManager[StoreConfig]:
    """Start the store's own server on this machine (:attr:`StoreConfig.EMBEDDED`, in the
    ``embedded`` extra) for as long as the context lasts; yields ``config`` pointing at it."""
    if not config.EMBEDDED:
        raise StoreError(f"{config.kind}: no model store configured and none can be started here")
    module, _, name = config.EMBEDDED.partition(":")
    start: Callable[[StoreConfig], AbstractContextManager[StoreConfig]]
    start = getattr(importlib.import_module(module), name)
    return start(config)


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


def _base(ref: ModelRef) -> str:
    return f"{PREFIX}/{ref.name}/{Manifest.key(ref.workers, ref.partition)}"


def _worker_key(ref: ModelRef, worker: int) -> str:
    return f"{_base(ref)}/worker-{worker}"


class Objects:
    """Models kept as objects by key: the layout and checks, whatever holds the bytes.

    Subclasses provide ``write``, ``read`` and ``delete_prefix``.
    """

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def read(self, key: str, limit: int | None = None) -> bytes:
        raise NotImplementedError

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        raise NotImplementedError

    # -- models --------------------------------------------------------------------------------

    def push(
        self,
        network: Network | LayerSource,
        name: str,
        workers: Sequence[int],
        partitions: Sequence[str] = ("min-comm",),
        images: Images | None = None,
        dtype: str = "float32",
    ) -> Manifest:
        """Cut ``network`` for every (workers, partition) and upload it, layer by layer."""
        _check_name(name)
        source = as_layers(network)
        manifest = Manifest(
            name,
            source.neurons,
            source.depth,
            float(source.bias),
            float(source.ymax),
            source.edges(),
            dtype,
        )
        for w in workers:
            for method in partitions:
                t0 = time.perf_counter()
                plan = make_plan(source, w, method)
                ref = ModelRef(name, w, method)
                self.write(f"{_base(ref)}/owners0.npy", _npy(plan.owners[0].astype(np.int32)))
                self.write_layers(source, ref, ShardCutter(plan), np.dtype(dtype))
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
        """The model's manifest, every field's type and bounds checked (it comes from outside)."""
        _check_name(name)
        key = f"{PREFIX}/{name}/manifest.json"
        try:
            raw = json.loads(self.read(key, MAX_MANIFEST))
        except ModelNotFound:
            raise ModelNotFound(f"unknown model {name!r}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFormatError(key, None, f"not JSON: {type(exc).__name__}") from None
        try:
            return _check_manifest(raw, name)
        except InputError as exc:
            raise ModelFormatError(key, None, f"malformed manifest: {exc}") from None

    def owners0(self, ref: ModelRef, neurons: int | None = None) -> np.ndarray:
        """Who owns each input pixel: integers in [0, workers), one per neuron when ``neurons``
        is given (the manifest's; its size then bounds the download too)."""
        key = f"{PREFIX}/{ref.name}/{Manifest.key(ref.workers, ref.partition)}/owners0.npy"
        limit = None if neurons is None else _NPY_HEADER + 8 * neurons
        owners = read_npy(self.read(key, limit), key, _INTS)
        if neurons is not None and len(owners) != neurons:
            raise ModelFormatError(key, None, f"{len(owners)} owners for {neurons} neurons")
        check_index(key, owners, ref.workers, InputError)
        return owners

    def write_layers(
        self, source: LayerSource, ref: ModelRef, cutter: ShardCutter, dtype: np.dtype[Any]
    ) -> None:
        """Each worker's header, then each layer's objects as it is cut (one layer in memory)."""
        plan = cutter.plan
        for p, first in enumerate(cutter.sends(0)):
            data = header_to_bytes(p, cutter.inputs(p), plan.depth, first)
            self.write(f"{_worker_key(ref, p)}/header.npz", data)
        for k in range(plan.depth):
            cut = cutter.cut(k, source.layer(k + 1), dtype)
            after = cutter.sends(k + 1) if k + 1 < plan.depth else [[] for _ in cut]
            for p, layer in enumerate(cut):
                data = layer_to_bytes(p, k, layer, after[p])
                self.write(f"{_worker_key(ref, p)}/layer-{k + 1}.npz", data)
            del cut

    def layers(self, ref: ModelRef, worker: int, dtype: str | None = None) -> StoredLayers:
        """Worker ``worker``'s layers to stream: the header is read (and checked) now, each
        layer when asked for, checked against the one before it."""
        key = f"{_worker_key(ref, worker)}/header.npz"
        header = header_from_bytes(self.read(key, MAX_HEADER), worker, ref.workers)
        dt = None if dtype is None else np.dtype(dtype)
        return StoredLayers(self, ref, LayerReader(worker, ref.workers, header, dt))

    def shard(self, ref: ModelRef, worker: int) -> Shard:
        """Worker ``worker``'s whole shard (every layer), each part checked and checked to be
        the one asked for. A store pushed before per-layer objects keeps one ``shard-<p>.npz``."""
        try:
            stream = self.layers(ref, worker)
        except ModelNotFound:
            whole = self.read(f"{_base(ref)}/shard-{worker}.npz")
            return shard_from_bytes(whole, worker, ref.workers)
        return Shard(worker, stream.inputs, [stream.layer(k)[0] for k in range(stream.depth)])

    def images(
        self, name: str, first: int | None = None, manifest: Manifest | None = None
    ) -> Images:
        """The stored images and truth, checked; exactly the manifest's shape when it is given."""
        key = f"{PREFIX}/{name}/images.npz"
        data = self.read(key)
        z = read_npz(data, key, (_I64, _I32, _F32))
        try:
            m, truth = _check_images(z, len(data), manifest)
        except InputError as exc:
            raise ModelFormatError(key, None, str(exc)) from None
        if first is not None:
            m = m[:first]
            truth = {k: v[v <= first] for k, v in truth.items()}
        return Images(m, truth)


class StoredLayers:
    """One worker's layers in a store, read one at a time in order (a LayerSupply for
    :class:`fsd.worker.LayerFeed`): nothing is kept once a layer is handed over."""

    def __init__(self, store: Objects, ref: ModelRef, reader: LayerReader) -> None:
        self.store, self.ref, self.reader = store, ref, reader

    @property
    def inputs(self) -> np.ndarray:
        return self.reader.inputs

    @property
    def depth(self) -> int:
        return self.reader.depth

    @property
    def first(self) -> Sends:
        return self.reader.first

    def layer(self, k: int) -> tuple[LayerShard, Sends]:
        """Layer ``k`` (0-based) and the sends of layer k+1, downloaded and checked."""
        key = f"{_worker_key(self.ref, self.reader.worker)}/layer-{k + 1}.npz"
        return self.reader.read(k, self.store.read(key))


class ModelStore(Objects):
    """Models in ``config.bucket`` of the store ``config`` names, through its backend
    (:data:`fsd.stores.STORES`, by ``config.kind``)."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.backend = stores.backend(config.kind)(config)
        self.bucket = config.bucket

    def prepare(self) -> None:
        """Reach the store and create the bucket if it does not exist: a push calls it before
        cutting anything, so that an unreachable store fails at once, not after the work."""
        self.backend.prepare()

    def write(self, key: str, data: bytes) -> None:
        """Put one object (the bucket is created on the first write if it does not exist)."""
        self.backend.write(key, data)

    def read(self, key: str, limit: int | None = None) -> bytes:
        """One object's bytes; ModelNotFound when it (or the bucket) does not exist.

        With ``limit``, an object larger than that many bytes is refused without reading it all.
        """
        return self.backend.read(key, limit)

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        """Delete every object under ``prefix``; how many there were (0: no bucket)."""
        return self.backend.delete_prefix(prefix, last=last)


class FolderStore(Objects):
    """The same models in a local folder (one file per key): local workers stream from it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts):
            raise InputError(f"invalid store key {key!r}")
        return self.root.joinpath(*parts)

    def write(self, key: str, data: bytes) -> None:
        """Write one file atomically (a reader never sees half of it)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise StoreError(f"model folder: cannot write {key}: {exc.strerror}") from None

    def read(self, key: str, limit: int | None = None) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as f:
                data = f.read() if limit is None else f.read(limit + 1)
        except FileNotFoundError:
            raise ModelNotFound(f"model folder has no {key}") from None
        except OSError as exc:
            raise StoreError(f"model folder: cannot read {key}: {exc.strerror}") from None
        if limit is not None and len(data) > limit:
            raise ModelFormatError(key, None, f"larger than {limit} bytes")
        return data

    def delete_prefix(self, prefix: str, *, last: Callable[[str], bool] | None = None) -> int:
        """Delete every file under ``prefix`` (a folder key); how many there were."""
        path = self._path(prefix.rstrip("/"))
        if not path.is_dir():
            return 0
        removed = sum(1 for f in path.rglob("*") if f.is_file())
        shutil.rmtree(path)
        return removed


MAX_HEADER = 1 << 30
"""Largest worker header read (bytes): its inputs and first selection maps, O(neurons)."""

_I32, _I64, _F32 = np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.float32)
_INTS = (np.dtype(np.int8), np.dtype(np.int16), _I32, _I64)
_NPY_HEADER = 4096  # bytes an npy file may spend before its data
MAX_MANIFEST = 1 << 22
"""Largest manifest.json read (bytes): a few hundred bytes per partition."""
MAX_LAYERS = 1 << 20
MAX_NEURONS = (1 << 31) - 1


def _check_manifest(raw: object, name: str) -> Manifest:
    """A Manifest from its JSON, or InputError naming the first field out of type or bounds."""
    if not isinstance(raw, dict) or set(raw) - {f.name for f in fields(Manifest)}:
        raise InputError("not an object with the manifest's fields")
    if raw.get("name") != name:
        raise InputError(f"names model {raw.get('name')!r}, not {name!r}")
    neurons = json_int(raw.get("neurons"), "neurons", 1, MAX_NEURONS)
    layers = json_int(raw.get("layers"), "layers", 1, MAX_LAYERS)
    dtype = raw.get("dtype")
    if dtype not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not float32 or float64")
    partitions = raw.get("partitions", {})
    if not isinstance(partitions, dict):
        raise InputError("partitions must be an object")
    for key, info in partitions.items():
        if not isinstance(info, dict):
            raise InputError(f"partitions[{key!r}] must be an object")
        workers = json_int(info.get("workers"), f"partitions[{key!r}].workers", 1, neurons)
        method = info.get("partition")
        if method not in PARTITIONERS or key != Manifest.key(workers, method):
            raise InputError(f"partitions[{key!r}] names partition {method!r}")
        json_int(info.get("planned_volume"), f"partitions[{key!r}].planned_volume", 0, 1 << 62)
        json_float(info.get("plan_seconds"), f"partitions[{key!r}].plan_seconds", 0, 1e9)
    truth = raw.get("truth_layers", [])
    if not isinstance(truth, list):
        raise InputError("truth_layers must be a list")
    for i, k in enumerate(truth):  # may exceed layers: truth of the full net, pushed cut short
        json_int(k, f"truth_layers[{i}]", 1, MAX_LAYERS)
    return Manifest(
        name,
        neurons,
        layers,
        json_float(raw.get("bias"), "bias", -math.inf, math.inf),
        json_float(raw.get("ymax"), "ymax", math.ulp(0.0), math.inf),
        json_int(raw.get("edges"), "edges", 0, 1 << 62),
        dtype,
        partitions,
        json_int(raw.get("images", 0), "images", 0, MAX_RUN_IMAGES),
        truth,
    )


def _check_images(
    z: dict[str, np.ndarray], size: int, manifest: Manifest | None
) -> tuple[sp.csr_matrix, dict[int, np.ndarray]]:
    """Images (COO triplets in a bounded shape) and truth (ascending 1-based image ids)."""
    names = {"shape", "rows", "cols", "vals"}
    if not names <= set(z) or any(not _TRUTH.fullmatch(k) for k in set(z) - names):
        raise InputError(f"members {sorted(z)[:8]} are not shape, rows, cols, vals, truth<k>")
    shape = z["shape"]
    if shape.dtype != _I64 or len(shape) != 2:
        raise InputError(f"shape is {describe(shape)}, not 2 int64")
    nrows, ncols = int(shape[0]), int(shape[1])
    if manifest is not None and (nrows, ncols) != (manifest.images, manifest.neurons):
        raise InputError(
            f"shape {nrows}x{ncols}, manifest says {manifest.images}x{manifest.neurons}"
        )
    # without a manifest, no more images than bytes: allocation stays proportional to the file
    if not (0 <= nrows <= max(size, 1) and 1 <= ncols <= MAX_NEURONS):
        raise InputError(f"shape {nrows}x{ncols} out of bounds")
    rows, cols, vals = z["rows"], z["cols"], z["vals"]
    if rows.dtype != _I32 or cols.dtype != _I32 or vals.dtype != _F32:
        raise InputError("rows and cols must be int32, vals float32")
    if not len(rows) == len(cols) == len(vals):
        raise InputError("rows, cols and vals differ in length")
    check_index("rows", rows, nrows, InputError)
    check_index("cols", cols, ncols, InputError)
    check_finite("vals", vals, InputError)
    m = sp.csr_matrix((vals, (rows, cols)), shape=(nrows, ncols))
    truth = {}
    for k in sorted(set(z) - names):
        layer, ids = int(k[5:]), z[k]
        if not 1 <= layer <= MAX_LAYERS or ids.dtype != _I64:
            raise InputError(f"{k}: truth of layer {layer} as {ids.dtype}")
        check_index(k, ids - 1, nrows, InputError)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
            raise InputError(f"{k}: image ids must ascend")
        truth[layer] = ids
    return m, truth


_TRUTH = re.compile(r"truth[1-9][0-9]{0,6}")


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _check_name(name: str) -> None:
    ok = name and len(name) <= 64 and all(c.isalnum() or c in "-_." for c in name)
    if not ok or name.startswith("."):
        raise InputError(f"invalid model name {name!r}: use letters, digits, '-', '_' or '.'")


STREAM_WINDOW = MIN_WINDOW
"""Layers a warm worker streams through at once when its window is below its depth (the one it
computes and the one arriving): the rest of its window it keeps resident (:func:`split_window`)."""


def split_window(window: int, depth: int) -> tuple[int, int]:
    """How a worker holding ``window`` layers of a ``depth``-layer shard uses them: ``(resident,
    streamed)``, the first layers it keeps warm between invocations and the prefetch window it
    streams the others through. ``window`` is what the planner says fits next to the activations
    (:func:`fsd.planner.worker_mb`), so ``resident + streamed <= window`` whatever the split:
    every layer resident when the shard fits (``(depth, 0)``), else :data:`STREAM_WINDOW` layers
    streamed and the rest kept."""
    if window >= depth:
        return depth, 0
    streamed = min(window, STREAM_WINDOW)
    return window - streamed, streamed


@dataclass
class _Kept:
    """The first layers of one worker's shard, kept warm: each with the reader's state after it,
    so the layers past them are read from the store checked against the last one kept."""

    start: LayerReader  # after the header, before layer 0 (inputs, depth, first sends)
    keep: int  # at most this many layers (the last invocation's resident count)
    layers: list[tuple[LayerShard, Sends, LayerReader]] = field(default_factory=list)


@dataclass
class Loaded:
    """What a worker runs from: its whole shard (``shard``) or a supply that serves its first
    layers from the cache and streams the rest (``layers``, with the prefetch ``window`` left
    for the streamed ones). ``hit``: nothing that is kept had to be downloaded."""

    shard: Shard | None
    layers: ResidentLayers | None
    window: int
    hit: bool

    @property
    def resident(self) -> int:
        """Layers kept warm for this worker (all of them for a whole shard)."""
        if self.layers is not None:
            return self.layers.resident
        return len(self.shard.layers) if self.shard is not None else 0

    @property
    def reads(self) -> int:
        """Layer objects downloaded so far for this invocation."""
        if self.layers is not None:
            return self.layers.reads
        return 0 if self.hit or self.shard is None else len(self.shard.layers)


class ResidentLayers:
    """One worker's layers (a LayerSupply for :class:`fsd.worker.LayerFeed`): the first
    ``resident`` come from a warm :class:`ShardCache` entry when it holds them, else from the
    store (then kept there); the others are read from the store one at a time, each checked
    against the layer before it, and dropped once handed over, as :class:`StoredLayers` does."""

    def __init__(self, store: Objects, ref: ModelRef, entry: _Kept, lock: threading.Lock) -> None:
        self.store, self.ref, self._entry, self._lock = store, ref, entry, lock
        with lock:
            self.resident = entry.keep
            self._warm = list(entry.layers[: entry.keep])
        last = self._warm[-1][2] if self._warm else entry.start
        self._reader = copy.copy(last)  # reading assigns its state anew: a shallow copy suffices
        self.inputs, self.depth, self.first = (
            entry.start.inputs,
            entry.start.depth,
            entry.start.first,
        )
        self.reads = 0

    def layer(self, k: int) -> tuple[LayerShard, Sends]:
        """Layer ``k`` (0-based) and the sends of layer k+1: kept, or downloaded and checked."""
        if k < len(self._warm):
            layer, after, _ = self._warm[k]
            return layer, after
        key = f"{_worker_key(self.ref, self._reader.worker)}/layer-{k + 1}.npz"
        layer, after = self._reader.read(k, self.store.read(key))
        self.reads += 1
        if k < self.resident:
            state = copy.copy(self._reader)
            with self._lock:  # another invocation may have kept it, or the budget shrunk
                entry = self._entry
                if len(entry.layers) == k and k < entry.keep:
                    entry.layers.append((layer, after, state))
        return layer, after


_Key = tuple[ModelRef, int, str | None]


class ShardCache:
    """A bounded LRU of shards kept by a warm function instance between invocations.

    Keyed by (model, worker, dtype); at most ``capacity`` entries (a new model, cut or worker
    evicts the least recently used). An entry is a whole shard when the worker's window holds
    every layer, else the first layers its window leaves after the streamed ones
    (:func:`split_window`): never more than the last invocation of that key said it may keep.
    """

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[_Key, Shard | _Kept] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def has(self, ref: ModelRef, worker: int, dtype: str | None = None) -> bool:
        """Whether that whole shard is warm here."""
        with self._lock:
            return isinstance(self._items.get((ref, worker, dtype)), Shard)

    def held(self) -> dict[_Key, int]:
        """Layers each entry holds now (what tests bound: layers, not bytes)."""
        with self._lock:
            return {key: len(item.layers) for key, item in self._items.items()}

    def get(
        self, store: Objects, ref: ModelRef, worker: int, dtype: str | None = None
    ) -> tuple[Shard, bool]:
        """The whole shard and whether it was already here (True: a warm hit, nothing
        downloaded)."""
        key = (ref, worker, dtype)
        with self._lock:
            shard = self._items.get(key)
            if isinstance(shard, Shard):
                self._items.move_to_end(key)
                self.hits += 1
                return shard, True
        shard = store.shard(ref, worker)
        self._put(key, shard)
        return shard, False

    def load(self, store: Objects, ref: ModelRef, worker: int, dtype: str, window: int) -> Loaded:
        """What worker ``worker`` runs from when it may hold ``window`` layers: its whole shard
        when they are all it has (kept whole), else its first layers kept here and the rest
        streamed (:func:`split_window`). Downloads only the header, or nothing, until the worker
        asks for its layers."""
        key = (ref, worker, dtype)
        with self._lock:
            item = self._items.get(key)
        if isinstance(item, Shard) and window >= len(item.layers):
            shard, hit = self.get(store, ref, worker, dtype)
            return Loaded(shard, None, window, hit)
        if isinstance(item, _Kept):
            start = item.start
        else:
            start = copy.copy(store.layers(ref, worker, dtype).reader)
        resident, streamed = split_window(window, start.depth)
        if not streamed:  # every layer fits: the whole shard, kept whole
            stream = StoredLayers(store, ref, copy.copy(start))
            shard = Shard(worker, start.inputs, [stream.layer(k)[0] for k in range(start.depth)])
            self._put(key, shard)
            return Loaded(shard, None, window, False)
        if not resident:  # nothing fits beside the streamed window: keep nothing (drop what was)
            with self._lock:
                self._items.pop(key, None)
                self.misses += 1
            return Loaded(
                None, ResidentLayers(store, ref, _Kept(start, 0), self._lock), streamed, False
            )
        with self._lock:
            entry = self._items.get(key)
            if not isinstance(entry, _Kept):
                entry = _Kept(start, resident)
            entry.keep = resident
            del entry.layers[resident:]  # the budget may have shrunk
            warm = len(entry.layers) == resident
        self._put(key, entry, hit=warm)
        return Loaded(None, ResidentLayers(store, ref, entry, self._lock), streamed, warm)

    def _put(self, key: _Key, item: Shard | _Kept, *, hit: bool = False) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            if hit:
                self.hits += 1
            else:
                self.misses += 1
