"""The binary per-layer model format: one file per layer, so a net of any depth streams.

A model folder holds ``layers.json`` and one ``l{k:05d}.csr`` per layer k = 1..L. The header::

    {"format": "fsd-layers", "version": 1, "name": "radix-65536x120", "neurons": N,
     "layers": L, "bias": -0.45, "ymax": 32.0, "dtype": "float32", "edges": [E1, ..., EL]}

Layer k's file is that layer's CSR (entry (i, j) is the edge i -> j), little-endian, at fixed
offsets so it can be read with ``numpy.fromfile`` or memory-mapped with ``numpy.memmap``::

    offset 0                  indptr  int64, N+1 values (row r: entries indptr[r]..indptr[r+1]-1)
    offset 8(N+1)             indices int32, E column ids, strictly increasing within a row,
                                      then zero bytes up to a multiple of 8
    offset 8(N+1) + pad8(4E)  data    float32 or float64 (the header's dtype), E values

and its size is exactly ``8(N+1) + pad8(4E) + itemsize*E``. The header is written last, so a
folder without one is not a model (a writer that died leaves no half model behind).

Everything read is hostile: header fields are type- and bound-checked (sizes by the caps of
:mod:`fsd.model.network`), a layer file's size must equal what the header implies before a byte
of it is allocated, and the layer is read :data:`CHUNK` entries at a time, each chunk checked
(indptr first, then index bounds and per-row order, then finiteness) before the next is read: a
sparse file whose header announces gigabytes of edges is refused after one chunk, never held
whole. Every problem is a :class:`~fsd.errors.ModelFormatError` naming the file.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError, ModelFormatError
from fsd.model.network import DTYPES, MAX_LAYERS, MAX_NEURONS, YMAX
from fsd.untrusted import check_finite, json_float, json_int

log = logging.getLogger(__name__)

#: What ``fsd generate --format`` writes: this binary format, or Graph Challenge TSV.
FORMATS = ("binary", "tsv")
FORMAT = "fsd-layers"
VERSION = 1
HEADER = "layers.json"
#: Largest header accepted: the edge counts of MAX_LAYERS layers fit with room to spare.
MAX_HEADER_BYTES = 1 << 20
MAX_NAME = 200
INDPTR = np.dtype("<i8")
INDICES = np.dtype("<i4")
#: Each of the value types (fsd.model.network.DTYPES) as stored: little-endian.
STORED: dict[str, np.dtype[np.floating]] = {
    name: np.dtype(name).newbyteorder("<") for name in DTYPES
}
_KEYS = {"format", "version", "name", "neurons", "layers", "bias", "ymax", "dtype", "edges"}
#: Entries read (and checked) at once: 64 MB of int32, so a layer of up to 16M edges (8 times the
#: Graph Challenge's largest) is one read, and a forged one is refused before more is allocated.
CHUNK = 1 << 24


def layer_file(k: int) -> str:
    """File name of layer ``k`` (1-based); zero-padded so a listing sorts by layer."""
    return f"l{k:05d}.csr"


def _pad8(size: int) -> int:
    return -(-size // 8) * 8


def layer_bytes(neurons: int, edges: int, dtype: np.dtype[Any]) -> int:
    """Exact size of a layer file with ``edges`` entries."""
    head = INDPTR.itemsize * (neurons + 1)
    return head + _pad8(INDICES.itemsize * edges) + dtype.itemsize * edges


def is_layer_folder(path: Path) -> bool:
    """Whether ``path`` holds a binary model (its header)."""
    return (Path(path) / HEADER).is_file()


@dataclass(frozen=True)
class Header:
    """What ``layers.json`` says, every field checked."""

    neurons: int
    bias: float
    ymax: float = YMAX
    dtype: str = "float32"
    edges: tuple[int, ...] = field(default_factory=tuple)
    name: str = "network"

    @property
    def layers(self) -> int:
        return len(self.edges)

    def to_json(self) -> str:
        doc = {"format": FORMAT, "version": VERSION, "name": self.name, "neurons": self.neurons,
               "layers": self.layers, "bias": self.bias, "ymax": self.ymax, "dtype": self.dtype,
               "edges": list(self.edges)}  # fmt: skip
        return json.dumps(doc)


def _reject_constant(text: str) -> float:
    raise ValueError(f"{text} is not a finite number")


def parse_header(raw: bytes, path: Path) -> Header:
    """A :class:`Header` from the bytes of ``layers.json``, or ModelFormatError naming ``path``."""
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelFormatError(path, None, f"not a JSON header: {str(exc)[:120]}") from None
    if not isinstance(doc, dict):
        raise ModelFormatError(path, None, "the header must be a JSON object")
    unknown = sorted(set(doc) - _KEYS)[:3]
    missing = sorted(_KEYS - set(doc))
    if unknown or missing:
        what = f"unknown fields {[u[:40] for u in unknown]}" if unknown else f"missing {missing}"
        raise ModelFormatError(path, None, f"header: {what}")
    if doc["format"] != FORMAT:
        raise ModelFormatError(path, None, f"header: format must be {FORMAT!r}")
    try:
        json_int(doc["version"], "version", VERSION, VERSION)
        neurons = json_int(doc["neurons"], "neurons", 1, MAX_NEURONS)
        layers = json_int(doc["layers"], "layers", 1, MAX_LAYERS)
        bias = json_float(doc["bias"], "bias", -math.inf, math.inf)
        ymax = json_float(doc["ymax"], "ymax", 0.0, math.inf)
        if ymax <= 0:
            raise InputError(f"ymax={ymax} must be positive")
        dtype, name, edges = doc["dtype"], doc["name"], doc["edges"]
        if not isinstance(dtype, str) or dtype not in STORED:
            raise InputError(f"dtype must be one of {sorted(STORED)}")
        if not isinstance(name, str) or len(name) > MAX_NAME:
            raise InputError(f"name must be a string of at most {MAX_NAME} characters")
        if not isinstance(edges, list) or len(edges) != layers:
            raise InputError(f"edges must be a list of {layers} counts (one per layer)")
        counts = tuple(
            json_int(e, f"edges[{k}]", 0, neurons * neurons) for k, e in enumerate(edges, 1)
        )
    except InputError as exc:
        raise ModelFormatError(path, None, f"header: {exc}") from None
    return Header(neurons, bias, ymax, dtype, counts, name)


def open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (a FIFO must not block the reader)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(mode):
            raise ModelFormatError(path, None, "not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(folder: Path) -> Header:
    path = Path(folder) / HEADER
    try:
        with open_regular(path) as fh:
            raw = fh.read(MAX_HEADER_BYTES + 1)
    except OSError as exc:
        raise ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise ModelFormatError(path, None, f"header larger than {MAX_HEADER_BYTES} bytes")
    return parse_header(raw, path)


def _read_part(fh: io.BufferedReader, part: np.ndarray, path: Path) -> None:
    """Fill ``part`` from ``fh``, straight into it."""
    view = part.data.cast("B")
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise ModelFormatError(path, None, "file shrank while being read")
        got += n


def read_checked(
    fh: io.BufferedReader,
    dtype: np.dtype[Any],
    count: int,
    path: Path,
    check: Callable[[np.ndarray, int], None] | None = None,
) -> np.ndarray:
    """``count`` values of ``dtype`` from ``fh``, :data:`CHUNK` at a time; ``check(part, start)``
    sees each part before the next is read, so a file that lies is refused after one chunk,
    not after allocating everything it announces (only checked parts are ever joined)."""
    parts: list[np.ndarray] = []
    done = 0
    while done < count:
        part = np.empty(min(CHUNK, count - done), dtype)
        _read_part(fh, part, path)
        if check is not None:
            check(part, done)
        parts.append(part)
        done += len(part)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype)


def check_indptr(path: Path, indptr: np.ndarray, edges: int) -> None:
    """A CSR's row pointers: from 0 to ``edges``, never decreasing."""
    if indptr[0] != 0 or indptr[-1] != edges:
        raise ModelFormatError(path, None, f"indptr must run from 0 to {edges}")
    if (np.diff(indptr) < 0).any():
        raise ModelFormatError(path, None, "indptr decreases")


def column_check(path: Path, neurons: int, indptr: np.ndarray) -> Callable[[np.ndarray, int], None]:
    """A :func:`read_checked` check of column ids, given the checked ``indptr``: each in range
    and strictly increasing within its row (across chunk ends too)."""
    starts = indptr[1:-1]  # positions where a new row may start lower
    last = [0]  # the previous chunk's last id

    def check(part: np.ndarray, start: int) -> None:
        if not len(part):
            return
        low, high = int(part.min()), int(part.max())
        if low < 0 or high >= neurons:
            bad = low if low < 0 else high
            raise ModelFormatError(path, None, f"column id {bad} outside 0..{neurons - 1}")
        falls = np.empty(len(part), bool)  # falls[i]: the id at start + i is not above the last
        falls[0] = start > 0 and part[0] <= last[0]
        np.less_equal(part[1:], part[:-1], out=falls[1:])
        lo, hi = np.searchsorted(starts, [start, start + len(part)])
        falls[starts[lo:hi] - start] = False
        if falls.any():
            at = start + int(np.argmax(falls))
            row = int(np.searchsorted(indptr, at, side="right")) - 1
            raise ModelFormatError(path, None, f"row {row}: column ids unsorted or repeated")
        last[0] = int(part[-1])

    return check


def finite_check(
    path: Path, stored: np.dtype[Any], engine: np.dtype[Any]
) -> Callable[[np.ndarray, int], None]:
    """A :func:`read_checked` check of weights: finite as stored and in the engine's dtype."""

    def check(part: np.ndarray, start: int) -> None:
        try:
            check_finite(str(path), part, InputError)
            if engine.itemsize < stored.itemsize:
                with np.errstate(over="ignore"):
                    narrowed = part.astype(engine)
                check_finite(str(path), narrowed, InputError)
        except InputError:
            raise ModelFormatError(
                path, None, f"weights must be finite (in {engine.name})"
            ) from None

    return check


class LayerFolder:
    """A binary model folder as a LayerSource: layers are read, checked and returned on demand.

    ``dtype`` is the engine's: every weight must be finite in it as well as in the stored one.
    ``layers`` reads only the first layers.
    """

    def __init__(
        self,
        folder: Path,
        layers: int | None = None,
        dtype: np.dtype[np.floating] | str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.header = read_header(self.folder)
        self.neurons = self.header.neurons
        self.depth = self.header.layers
        self.bias = self.header.bias
        self.ymax = self.header.ymax
        self.name = self.header.name
        self.dtype = STORED[self.header.dtype]
        self.check_dtype = np.dtype(dtype) if dtype is not None else self.dtype
        if layers is not None:
            if not 1 <= layers <= self.depth:
                raise InputError(f"--layers {layers}: {self.folder} holds layers 1..{self.depth}")
            self.depth = layers

    def edges(self) -> int:
        return int(sum(self.header.edges[: self.depth]))

    def layer(self, k: int) -> sp.csr_matrix:
        if not 1 <= k <= self.depth:
            raise InputError(f"layer {k} is outside 1..{self.depth}")
        n, edges = self.neurons, self.header.edges[k - 1]
        path = self.folder / layer_file(k)
        expected = layer_bytes(n, edges, self.dtype)
        try:
            with open_regular(path) as fh:
                info = os.fstat(fh.fileno())
                if info.st_size != expected:
                    raise ModelFormatError(
                        path,
                        None,
                        f"{info.st_size} bytes, but the header's {n} neurons and {edges} "
                        f"edges make {expected}",
                    )
                indptr = read_checked(fh, INDPTR, n + 1, path)
                check_indptr(path, indptr, edges)
                indices = read_checked(fh, INDICES, edges, path, column_check(path, n, indptr))
                fh.seek(_pad8(INDICES.itemsize * edges) - INDICES.itemsize * edges, os.SEEK_CUR)
                checked = finite_check(path, self.dtype, self.check_dtype)
                data = read_checked(fh, self.dtype, edges, path, checked)
        except OSError as exc:
            raise ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
        matrix = sp.csr_matrix((data, indices, indptr), shape=(n, n), copy=False)
        matrix.has_sorted_indices = True
        return matrix


class LayerWriter:
    """Writes a binary model layer by layer; the header goes last, on :meth:`close`.

    Holds nothing but the edge counts, so a net of any depth is written in O(one layer).
    """

    def __init__(
        self,
        folder: Path,
        neurons: int,
        bias: float,
        ymax: float = YMAX,
        dtype: str = "float32",
        name: str = "network",
    ) -> None:
        if dtype not in STORED:
            raise InputError(f"dtype must be one of {sorted(STORED)}, got {dtype}")
        if not 1 <= neurons <= MAX_NEURONS:
            raise InputError(f"neurons must be between 1 and {MAX_NEURONS}, got {neurons}")
        self.folder = Path(folder)
        self.neurons, self.bias, self.ymax, self.dtype = neurons, bias, ymax, dtype
        self.name = name[:MAX_NAME]
        self.edges: list[int] = []
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / HEADER).unlink(missing_ok=True)  # no stale header over new layers
        except OSError as exc:
            raise InputError(f"cannot write {self.folder}: {exc.strerror or exc}") from None

    def write(self, w: sp.csr_matrix) -> None:
        """Append the next layer (a canonical CSR matrix of shape (N, N))."""
        n, k = self.neurons, len(self.edges) + 1
        if k > MAX_LAYERS:
            raise InputError(f"at most {MAX_LAYERS} layers")
        if w.shape != (n, n):
            raise InputError(f"layer {k} has shape {w.shape}, expected ({n}, {n})")
        if not w.has_canonical_format:
            w = w.copy()
            w.sum_duplicates()
        dtype = STORED[self.dtype]
        data = np.asarray(w.data)
        if not np.array_equal(data.astype(dtype).astype(data.dtype), data):
            raise InputError(f"layer {k}: weights are not exact in {self.dtype}")
        edges = int(w.nnz)
        path = self.folder / layer_file(k)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("wb") as fh:
                np.asarray(w.indptr, dtype=INDPTR).tofile(fh)
                np.asarray(w.indices, dtype=INDICES).tofile(fh)
                fh.write(b"\0" * (_pad8(INDICES.itemsize * edges) - INDICES.itemsize * edges))
                np.asarray(data, dtype=dtype).tofile(fh)
            tmp.replace(path)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self.edges.append(edges)

    def close(self) -> Header:
        """Write the header: from now on the folder is a model."""
        if not self.edges:
            raise InputError("a model needs at least one layer")
        edges = tuple(self.edges)
        header = Header(self.neurons, self.bias, self.ymax, self.dtype, edges, self.name)
        path = self.folder / HEADER
        tmp = path.with_name(HEADER + ".tmp")
        try:
            tmp.write_text(header.to_json())
            tmp.replace(path)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        log.debug("wrote %s: %d layers", self.folder, header.layers)
        return header

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
