"""Graph Challenge TSV layout: read (fast path + precise errors), write, and a binary cache.

Layout (1-based ids, tab separated, optionally gzipped; a ``neuron{N}`` folder holding
``layers.json`` is a binary model instead, see :mod:`fsd.model.layers`)::

    neuron{N}/n{N}-l{k}.tsv          row col weight   (layer k, edge row -> col)
    sparse-images-{N}.tsv            image pixel value
    neuron{N}-l{L}-categories.tsv    1-based ids of images alive after L layers

Every file is input from outside: ids are bounded by the declared sizes (and sizes by the caps of
:mod:`fsd.model.network`) before anything sized by them is allocated, values must be finite in
the engine's dtype, duplicate entries are refused, and every problem is a
:class:`~fsd.errors.ModelFormatError` naming file and line. Text is read (and gunzipped) a block
at a time, no line longer than :data:`MAX_LINE`, so a file of one endless line (a gzip of NUL
bytes, a sparse file) is refused with a block in memory, and memory grows only with the valid,
distinct entries read. The binary cache is checked as strictly as the text files, a chunk at a
time; an unusable cache is rebuilt.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fsd.errors import InputError, ModelFormatError
from fsd.model.layers import (
    CHUNK,
    HEADER,
    LayerFolder,
    check_indptr,
    column_check,
    finite_check,
    is_layer_folder,
    open_regular,
    read_checked,
)
from fsd.model.network import MAX_LOADED_IMAGES, MAX_NEURONS, Images, Network, bias_for
from fsd.untrusted import npy_header, npy_header_end

log = logging.getLogger(__name__)

# at most 9 digits: a name can never make a huge number (larger sizes are refused by the caps)
_NEURON_DIR = re.compile(r"^neuron(\d{1,9})$")
_LAYER_FILE = re.compile(r"^n(\d{1,9})-l(\d{1,9})\.tsv(\.gz)?$")
_CATEGORIES = re.compile(r"^neuron(\d{1,9})-l(\d{1,9})-categories\.tsv(\.gz)?$")
CACHE_VERSION = 2
#: Largest 1-based image id accepted in a file read only in part (``count`` given): ids stay int32.
MAX_IMAGE_ID = 2**31 - 1
#: What a truncated or corrupt gzip stream raises (BadGzipFile is an OSError, so it comes first).
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)
#: Longest line accepted, its newline included: a triple needs a few dozen bytes, and no line is
#: ever held longer than this (a file of one endless line is refused after this many bytes).
MAX_LINE = 1024
#: Text parsed at once (with at most CHUNK_LINES lines): the parser's memory is a few times this.
BLOCK_BYTES = 1 << 23
#: Most a gzip file may inflate, times its size: text of numbers gives about 6, a gzip of one
#: repeated byte 1000 (a 1 MB file must not become gigabytes of text to parse).
MAX_INFLATION = 100
_BLANK_RUNS = re.compile(rb"\n\n+")
#: What the cache's arrays may hold (as np.savez writes scipy's CSR arrays).
_INTS = (np.dtype("<i4"), np.dtype("<i8"))
_FLOATS = (np.dtype("<f4"), np.dtype("<f8"))


def _existing(base: Path) -> Path | None:
    """``base`` or ``base.gz``, whichever exists."""
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


class _CappedGzip(gzip.GzipFile):
    """A gzip file that refuses to inflate past :data:`MAX_INFLATION` times its size; reads of
    n bytes decompress no more than n."""

    def __init__(self, raw: io.BufferedReader, path: Path) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self.path = path
        self.size = os.fstat(raw.fileno()).st_size
        self.left = MAX_INFLATION * self.size

    def _count(self, data: bytes) -> bytes:
        self.left -= len(data)
        if self.left < 0:
            reason = f"inflates to more than {MAX_INFLATION} times its {self.size} bytes"
            raise ModelFormatError(self.path, None, reason)
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:  # "all of it": no more than allowed, and one byte
            size = max(self.left, 0) + 1
        return self._count(super().read(size))

    def readline(self, size: int | None = -1) -> bytes:
        return self._count(super().readline(size))


@contextmanager
def _open_bytes(path: Path) -> Iterator[BinaryIO]:
    """``path``'s bytes, gunzipped if it ends in ``.gz``; only a regular file (a FIFO would
    block)."""
    with open_regular(path) as raw:
        if path.suffix != ".gz":
            yield raw
            return
        with _CappedGzip(raw, path) as fh:
            yield fh  # type: ignore[misc]  # a GzipFile is a binary file


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines (1-based) of ``path``; a line longer than :data:`MAX_LINE` bytes is a
    ModelFormatError there, read no further than that."""
    with _open_bytes(path) as fh:
        lineno = 0
        while line := fh.readline(MAX_LINE + 1):
            lineno += 1
            if len(line) > MAX_LINE:
                raise ModelFormatError(path, lineno, f"line longer than {MAX_LINE} bytes")
            yield lineno, line.decode("utf-8", errors="replace")


class _LongLine(Exception):
    """A block holds a line longer than :data:`MAX_LINE` (the slow scan says which)."""


def _parts(block: bytes) -> Iterator[bytes]:
    """``block`` (whole lines, or the end of the file) in parts of at most :data:`CHUNK_LINES`
    lines, runs of blank lines merged; raises :class:`_LongLine` if a line is over MAX_LINE.

    Fast test first: if every aligned run of MAX_LINE/2 bytes holds a newline, no line can be
    longer than MAX_LINE - 1; only a block failing it gets the exact, slower test.
    """
    newline = np.frombuffer(block, np.uint8) == 10
    size = MAX_LINE // 2
    runs = len(block) // size
    tail = len(block) - 1 - block.rfind(b"\n")  # bytes after the last newline (end of file)
    if tail > MAX_LINE:
        raise _LongLine
    fits = newline[: runs * size].reshape(runs, size).any(axis=1).all()
    if not fits and (np.diff(np.flatnonzero(newline), prepend=-1) > MAX_LINE).any():
        raise _LongLine
    lines = int(np.count_nonzero(newline))
    if lines * 4 > len(block):  # mostly blank lines (a triple takes 6 bytes or more)
        block = _BLANK_RUNS.sub(b"\n", block)
        newline = np.frombuffer(block, np.uint8) == 10
        lines = int(np.count_nonzero(newline))
    if lines <= CHUNK_LINES:
        yield block
        return
    start = 0
    for end in np.flatnonzero(newline)[CHUNK_LINES - 1 :: CHUNK_LINES].tolist():
        yield block[start : end + 1]
        start = end + 1
    if start < len(block):
        yield block[start:]


def _blocks(path: Path) -> Iterator[bytes]:
    """The text of ``path`` (gunzipped) in blocks of whole lines, at most :data:`BLOCK_BYTES`
    plus a line and :data:`CHUNK_LINES` lines each; raises :class:`_LongLine` at a line over
    :data:`MAX_LINE` bytes, so neither a line nor the text is ever whole in memory."""
    with _open_bytes(path) as fh:
        carry = b""
        while True:
            fresh = fh.read(BLOCK_BYTES)
            data = carry + fresh if carry else fresh
            cut = data.rfind(b"\n") + 1 if fresh else len(data)  # the end of the file ends a line
            if len(data) - cut > MAX_LINE:
                raise _LongLine
            block, carry = data[:cut], data[cut:]
            if block:
                yield from _parts(block)
            elif not fresh:
                return


def finite_in(values: np.ndarray, dtype: np.dtype[np.floating] | str) -> np.ndarray:
    """Which ``values`` stay finite once cast to ``dtype`` (1e308 is finite in float64 only)."""
    with np.errstate(over="ignore", invalid="ignore"):
        result: np.ndarray = np.isfinite(np.asarray(values).astype(dtype, copy=False))
    return result


def _scan(
    path: Path,
    limits: tuple[int, int],
    dtype: np.dtype[np.floating],
    duplicate: tuple[int, int] | None = None,
    hint: str = "",
) -> ModelFormatError:
    """Slow scan that finds the first bad line, used only after the fast path refused the file.

    ``duplicate`` is the 1-based (row, col) the fast path found twice, so the scan need not
    remember every key; ``hint`` is added to the message of an id above ``limits[0]``.
    """
    first = 0
    lineno = 0
    try:
        for lineno, line in _lines(path):
            fields = line.split()
            if not fields and "\t" not in line:  # blank (the parser takes a tab for fields)
                continue
            if len(fields) != 3:
                return ModelFormatError(path, lineno, f"expected 3 fields, found {len(fields)}")
            for pos, field in enumerate(fields):
                where, text = f"field {pos + 1}", field[:40]  # echo no more of a hostile field
                try:
                    value = float(field)
                except ValueError:
                    return ModelFormatError(path, lineno, f"{where} is not a number: {text!r}")
                if not np.isfinite(value):
                    return ModelFormatError(path, lineno, f"{where} is not finite: {text!r}")
                if pos == 2:
                    if not finite_in(np.array([value]), dtype)[0]:
                        reason = f"value {text} overflows {dtype.name} (the engine's dtype)"
                        return ModelFormatError(path, lineno, reason)
                    continue
                if value != int(value):
                    return ModelFormatError(path, lineno, f"{where} is not an integer id")
                if not 1 <= value <= limits[pos]:
                    reason = f"id {int(value)} in {where} is outside 1..{limits[pos]}"
                    extra = hint if pos == 0 and value > limits[0] else ""
                    return ModelFormatError(path, lineno, reason + extra)
            if (
                duplicate is not None
                and (int(float(fields[0])), int(float(fields[1]))) == duplicate
            ):
                if first:
                    where = f"duplicate entry {duplicate[0]} {duplicate[1]} (first on line {first})"
                    return ModelFormatError(path, lineno, where)
                first = lineno
    except ModelFormatError as exc:  # a line too long
        return exc
    except _GZIP_ERRORS as exc:
        return ModelFormatError(path, lineno + 1, f"corrupt or truncated gzip data: {exc}")
    except OSError as exc:
        return ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}")
    return ModelFormatError(path, None, "not tab-separated triples: row<TAB>col<TAB>value")


CHUNK_LINES = 1 << 22
"""Most lines parsed at once (a block of BLOCK_BYTES holds fewer): a large file is never whole in
memory twice, and reading the first K images stops soon after image K."""


def read_triples(
    path: Path,
    limits: tuple[int, int],
    dtype: np.dtype[np.floating] | str = "float32",
    hint: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``row col value`` lines as 0-based int64 ids and float64 values; every line validated.

    Ids must lie in ``1..limits``, values be finite in ``dtype`` (the engine's), and no (row, col)
    appear twice: summing duplicates would silently change the model.
    """
    rows, cols, vals, _ = _read_triples(path, limits, np.dtype(dtype), hint, None)
    return rows, cols, vals


def _read_triples(
    path: Path,
    limits: tuple[int, int],
    dtype: np.dtype[np.floating],
    hint: str,
    below: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """:func:`read_triples`, keeping only 0-based rows under ``below`` (None: all), and the
    largest row seen. A file sorted by row (as official files are) is read no further than the
    first line past ``below``."""
    seen = -1
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    last_key, ordered = -1, True
    union = np.empty(0, np.int64)  # once order breaks: every key so far, sorted
    try:
        for block in _blocks(path):
            frame = pd.read_csv(
                io.BytesIO(block),
                sep="\t",
                header=None,
                names=["r", "c", "v"],
                dtype=np.float64,
                engine="c",
                index_col=False,
            )
            if frame.empty:  # blank lines only
                continue
            data = frame.to_numpy()
            rows, cols, vals = data[:, 0], data[:, 1], data[:, 2]
            bad = (
                ~np.isfinite(data).all(axis=1)
                | ~finite_in(vals, dtype)
                | (rows != np.floor(rows))
                | (cols != np.floor(cols))
                | (rows < 1)
                | (rows > limits[0])
                | (cols < 1)
                | (cols > limits[1])
            )
            if bad.any():
                raise _scan(path, limits, dtype, hint=hint)
            r, c = rows.astype(np.int64) - 1, cols.astype(np.int64) - 1
            seen = max(seen, int(r.max()))
            keys = r * limits[1] + c  # < 2**31 * 2**20: fits int64
            # official files are sorted: then no sort is needed to find duplicates
            if ordered and keys[0] > last_key and (np.diff(keys) > 0).all():
                last_key = int(keys[-1])
            else:
                if ordered:  # order breaks here; the chunks before were all kept whole
                    union = np.concatenate([kr * limits[1] + kc for kr, kc, _ in kept] or [union])
                    ordered = False
                union = _add_keys(union, keys, path, limits, dtype)
            if below is not None:
                keep = r < below
                r, c, vals = r[keep], c[keep], vals[keep]
            kept.append((r, c, vals))
            if ordered and below is not None and int(rows[-1]) > below:
                break  # sorted by row: every later line is past the rows kept
    except (_LongLine, ValueError, pd.errors.ParserError, UnicodeDecodeError, *_GZIP_ERRORS):
        raise _scan(path, limits, dtype, hint=hint) from None
    except OSError as exc:
        raise ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if not kept:
        raise ModelFormatError(path, None, "file is empty")
    if len(kept) == 1:
        return (*kept[0], seen)
    return (
        np.concatenate([k[0] for k in kept]),
        np.concatenate([k[1] for k in kept]),
        np.concatenate([k[2] for k in kept]),
        seen,
    )


def _add_keys(
    union: np.ndarray,
    keys: np.ndarray,
    path: Path,
    limits: tuple[int, int],
    dtype: np.dtype[np.floating],
) -> np.ndarray:
    """``union`` (sorted, distinct) with ``keys`` merged in; a key seen before (in ``union`` or
    earlier in ``keys``) is refused at once, so a file repeating lines is refused after a chunk,
    not held whole."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    again = np.zeros(len(keys), bool)
    again[order[1:][ranked[1:] == ranked[:-1]]] = True  # stable: the later of equal keys
    if len(union):
        at = np.searchsorted(union, keys).clip(max=len(union) - 1)
        again |= union[at] == keys
    if again.any():
        key = int(keys[int(np.argmax(again))])  # the first line to repeat an earlier one
        raise _scan(path, limits, dtype, duplicate=(key // limits[1] + 1, key % limits[1] + 1))
    merged = np.concatenate([union, ranked])
    merged.sort(kind="stable")  # two sorted runs: a merge
    return merged


def _csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read folder {folder}: {exc.strerror or exc}") from None


def _check_neurons(neurons: int, where: str) -> None:
    if not 1 <= neurons <= MAX_NEURONS:
        raise InputError(f"{where}: neurons must be between 1 and {MAX_NEURONS}, got {neurons}")


def find_neurons(root: Path) -> list[int]:
    """Sizes N of the ``neuron{N}`` folders under ``root``."""
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    return sorted(int(m.group(1)) for p in _listing(root) if (m := _NEURON_DIR.match(p.name)))


def available_layers(root: Path, neurons: int) -> int:
    """How many consecutive layers 1..L exist for ``neurons``."""
    folder = root / f"neuron{neurons}"
    if not folder.is_dir():
        raise InputError(f"network folder not found: {folder}")
    present = {
        int(m.group(2))
        for p in _listing(folder)
        if (m := _LAYER_FILE.match(p.name)) and int(m.group(1)) == neurons
    }
    depth = 0
    while depth + 1 in present:
        depth += 1
    if depth == 0:
        raise InputError(f"no layer files n{neurons}-l1.tsv[.gz] in {folder}")
    return depth


def layer_path(root: Path, neurons: int, layer: int) -> Path:
    base = root / f"neuron{neurons}" / f"n{neurons}-l{layer}.tsv"
    found = _existing(base)
    if found is None:
        raise InputError(f"layer file missing: {base}[.gz]")
    return found


def default_cache_dir() -> Path:
    """Where TSV models are cached unless the entry point says (``FSD_CACHE_DIR``)."""
    return Path.home() / ".cache" / "fsd"


def _cache_file(paths: list[Path], folder: Path | None = None) -> Path:
    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for p in paths:
        st = p.stat()
        digest.update(os.fsencode(p.resolve()))  # bytes: any path, UTF-8 or not
        digest.update(f"|{st.st_size}|{st.st_mtime_ns}|".encode())
    return (folder or default_cache_dir()) / f"net-{digest.hexdigest()[:24]}.npz"


class _CappedReader(io.BufferedReader):
    """A file no read of which returns more than a chunk of float64 (see
    :func:`~fsd.model.layers.read_checked`): zipfile reads a central directory whole, sized by
    the file's own (forgeable) end record, which must not make it allocate gigabytes."""

    CAP = 8 * CHUNK

    def read(self, size: int | None = -1, /) -> bytes:
        if size is not None and size > self.CAP:
            raise ValueError(f"a read of {size} bytes")
        if size is None or size < 0:
            data = super().read(self.CAP + 1)
            if len(data) > self.CAP:
                raise ValueError(f"a read of more than {self.CAP} bytes")
            return data
        return super().read(size)


def _npz_array(
    raw: io.BufferedReader,
    info: zipfile.ZipInfo,
    dtypes: tuple[np.dtype[Any], ...],
    most: int,
    path: Path,
    check: Callable[[np.ndarray, int], None] | None = None,
) -> np.ndarray:
    """Member ``info`` of the npz open as ``raw``: a 1-D array of at most ``most`` values of one
    of ``dtypes``.

    The member must be stored (as ``np.savez`` writes it), its header's length must match the
    bytes stored, and it is read a chunk at a time, each seen by ``check`` first (see
    :func:`~fsd.model.layers.read_checked`) and by the CRC at the end: neither a forged header
    nor a sparse file can make us allocate more than checked data; nothing is unpickled.
    """
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
        raise ValueError(f"{name}: not a stored member")
    raw.seek(info.header_offset)
    local = raw.read(30)
    if len(local) != 30 or local[:4] != b"PK\3\4":
        raise ValueError(f"{name}: no local header")
    raw.seek(int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little"), 1)
    prefix = raw.read(12)
    head = prefix + raw.read(max(npy_header_end(prefix, name) - len(prefix), 0))
    dtype, count, offset = npy_header(head, name, dtypes)
    if count > most or offset != len(head) or count * dtype.itemsize != info.file_size - offset:
        raise ValueError(f"{name}: {count} x {dtype} in {info.file_size} bytes")
    crc = [zlib.crc32(head)]

    def checked(part: np.ndarray, start: int) -> None:
        if check is not None:
            check(part, start)
        crc[0] = zlib.crc32(part.data, crc[0])

    array = read_checked(raw, dtype, count, path, checked)
    if crc[0] != info.CRC:
        raise ValueError(f"{name}: bad CRC")
    return array


def _load_cache(path: Path, neurons: int, depth: int) -> list[sp.csr_matrix] | None:
    """The cached layers, or None if the cache is missing or unusable in any way (then rebuilt).

    The cache is a file from outside like the TSVs: checked as strictly (shapes, ids in range,
    canonical CSR, finite values), a chunk at a time as a binary layer file is, so no more is
    allocated than the checked data.
    """
    if not path.is_file():
        return None
    mats = []
    finite = finite_check(path, np.dtype(np.float64), np.dtype(np.float64))
    try:
        with _CappedReader(io.FileIO(path)) as raw, zipfile.ZipFile(raw) as zf:
            for k in range(depth):
                indptr = _npz_array(raw, zf.getinfo(f"p{k}.npy"), _INTS, neurons + 1, path)
                if indptr.shape != (neurons + 1,) or not 0 <= indptr[-1] <= neurons * neurons:
                    raise ValueError(f"layer {k + 1}: bad indptr")
                edges = int(indptr[-1])
                check_indptr(path, indptr, edges)
                columns = column_check(path, neurons, indptr)
                indices = _npz_array(raw, zf.getinfo(f"i{k}.npy"), _INTS, edges, path, columns)
                data = _npz_array(raw, zf.getinfo(f"x{k}.npy"), _FLOATS, edges, path, finite)
                if not indices.size == data.size == edges:
                    raise ValueError(f"layer {k + 1}: sizes differ")
                matrix = sp.csr_matrix((data, indices, indptr), shape=(neurons, neurons))
                if not matrix.has_canonical_format:
                    raise ValueError(f"layer {k + 1}: not canonical (unsorted or duplicates)")
                mats.append(matrix)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, InputError) as exc:
        log.warning("ignoring unusable cache %s (%s); reading the TSV files", path, exc)
        return None
    return mats


def _save_cache(path: Path, layers: list[sp.csr_matrix]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for k, w in enumerate(layers):
        arrays[f"p{k}"], arrays[f"i{k}"], arrays[f"x{k}"] = w.indptr, w.indices, w.data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy stubs miss **kwds
        tmp.replace(path)
    except OSError as exc:  # a read-only home must not break inference
        log.debug("cannot write cache %s: %s", path, exc)


def model_folder(root: Path, neurons: int | None = None) -> tuple[Path, int | None]:
    """Where the model under ``root`` is: ``(folder, None)`` for a binary layer folder (``root``
    itself or ``root/neuron{N}``), else ``(root, N)`` for TSV files, N inferred from the
    ``neuron{N}`` folders when not given."""
    root = Path(root)
    if is_layer_folder(root):
        return root, None
    if neurons is None:
        sizes = find_neurons(root)
        if len(sizes) != 1:
            found = ", ".join(map(str, sizes)) or "none"
            raise InputError(f"cannot infer --neurons in {root}: neuron folders found: {found}")
        neurons = sizes[0]
        _check_neurons(neurons, str(root / f"neuron{neurons}"))
    else:
        _check_neurons(neurons, "--neurons")
    folder = root / f"neuron{neurons}"
    if is_layer_folder(folder):
        return folder, None
    return root, neurons


def open_layer_folder(
    folder: Path,
    neurons: int | None,
    layers: int | None,
    dtype: np.dtype[np.floating] | str,
) -> LayerFolder:
    """The binary model in ``folder``, checked against a ``--neurons`` given."""
    source = LayerFolder(folder, layers, dtype)
    if neurons is not None and source.neurons != neurons:
        raise InputError(f"--neurons {neurons}, but {folder / HEADER} says {source.neurons}")
    return source


def load_network(
    root: Path,
    neurons: int | None = None,
    layers: int | None = None,
    cache: bool = True,
    dtype: np.dtype[np.floating] | str = "float32",
    cache_dir: Path | None = None,
) -> Network:
    """Load the official layout or a binary layer folder (``layers.json``, see
    :mod:`fsd.model.layers`); repeat loads of unchanged TSV files come from a binary cache in
    ``cache_dir`` (the entry point's ``FSD_CACHE_DIR``; None: :func:`default_cache_dir`).

    ``dtype`` is the one the engine will run in: every weight must be finite in it.
    """
    dtype = np.dtype(dtype)
    folder, tsv_neurons = model_folder(Path(root), neurons)
    if tsv_neurons is None:
        source = open_layer_folder(folder, neurons, layers, dtype)
        mats = [source.layer(k) for k in range(1, source.depth + 1)]
        return Network(mats, source.bias, source.ymax, source.name)
    root, neurons = folder, tsv_neurons
    depth = available_layers(root, neurons)
    if layers is not None:
        if layers < 1:
            raise InputError(f"--layers must be >= 1, got {layers}")
        if layers > depth:
            layer_path(root, neurons, depth + 1)  # raises: names the first missing file
        depth = layers
    paths = [layer_path(root, neurons, k) for k in range(1, depth + 1)]
    cached = _load_cache(_cache_file(paths, cache_dir), neurons, depth) if cache else None
    if cached is not None and not all(finite_in(w.data, dtype).all() for w in cached):
        cached = None  # finite only in float64: the TSVs say where (or differ from the cache)
    if cached is not None:
        mats = cached
    else:
        mats = []
        for path in paths:
            rows, cols, vals = read_triples(path, (neurons, neurons), dtype)
            mats.append(_csr(rows, cols, vals, (neurons, neurons)))
        if cache:
            _save_cache(_cache_file(paths, cache_dir), mats)
    return Network(mats, bias_for(neurons), name=f"graphchallenge-{neurons}x{depth}")


def read_categories(path: Path, limit: int = MAX_IMAGE_ID) -> np.ndarray:
    """Sorted 1-based image ids from a categories file; each must lie in ``1..limit``, and
    there can be no more of them than images (``limit``, at most ``MAX_LOADED_IMAGES``)."""
    most = min(limit, MAX_LOADED_IMAGES)
    ids: list[int] = []
    lineno = 0
    try:
        for lineno, line in _lines(path):
            text = line.strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                raise ModelFormatError(path, lineno, f"not an image id: {text[:40]!r}") from None
            if not 1 <= value <= limit:
                raise ModelFormatError(path, lineno, f"image id {value} is outside 1..{limit}")
            if len(ids) == most:
                raise ModelFormatError(path, lineno, f"more than {most} image ids")
            ids.append(value)
    except _GZIP_ERRORS as exc:
        raise ModelFormatError(path, lineno + 1, f"corrupt or truncated gzip data: {exc}") from None
    except OSError as exc:
        raise ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    return np.unique(np.asarray(ids, dtype=np.int64))


def load_images(
    root: Path,
    neurons: int,
    count: int | None = None,
    dtype: np.dtype[np.floating] | str = "float32",
) -> Images:
    """Load ``sparse-images-{N}`` (optionally only the first ``count``) and every truth file.

    Without ``count`` every image is loaded, so ids are capped at ``MAX_LOADED_IMAGES``; with it
    only rows 1..count are kept. Either way the matrix is sized by the cap or ``count``, never by
    an id. Pixel values must be finite in ``dtype``, the engine's.
    """
    root = Path(root)
    _check_neurons(neurons, str(root))
    if count is not None and not 1 <= count <= MAX_LOADED_IMAGES:
        raise InputError(f"--images must be between 1 and {MAX_LOADED_IMAGES}, got {count}")
    base = root / f"sparse-images-{neurons}.tsv"
    path = _existing(base)
    if path is None:
        raise InputError(f"image file missing: {base}[.gz]")
    if count is None:
        limits = (MAX_LOADED_IMAGES, neurons)
        hint = f" (at most {MAX_LOADED_IMAGES} images are read whole; --images K reads the first K)"
    else:
        limits, hint = (MAX_IMAGE_ID, neurons), ""
    rows, cols, vals, seen = _read_triples(path, limits, np.dtype(dtype), hint, count)
    total = seen + 1  # images seen: all of them, or some past the first ``count``
    if count is not None and count > total:
        raise InputError(f"--images {count} but {path} holds only {total} images")
    matrix = _csr(rows, cols, vals, (count or total, neurons))
    # a file read only up to its first ``count`` images does not say how many it holds: the
    # truth's ids are then bounded as the images' are, and cut to the first ``count`` below
    bound = total if count is None or total <= count else limits[0]
    truth: dict[int, np.ndarray] = {}
    for p in _listing(root):
        m = _CATEGORIES.match(p.name)
        if m and int(m.group(1)) == neurons:
            truth[int(m.group(2))] = read_categories(p, bound)
    return Images(matrix, truth).head(count) if count is not None else Images(matrix, truth)


def _write_tsv(path: Path, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    whole = vals.size and not np.signbit(vals).any() and (vals == np.trunc(vals)).all()
    if whole and vals.max() < 2**53:  # images: the text "%.17g" gives, twice as fast
        vals = vals.astype(np.int64)
    frame = pd.DataFrame({"r": rows + 1, "c": cols + 1, "v": vals})
    try:
        frame.to_csv(path, sep="\t", header=False, index=False, float_format="%.17g")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def output_folder(path: Path) -> Path:
    """``path`` as an existing folder (created if needed), or an InputError saying why not."""
    if path.exists() and not path.is_dir():
        raise InputError(f"not a folder: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return path


def write_layer(root: Path, neurons: int, k: int, w: sp.csr_matrix) -> None:
    """Write layer ``k`` as ``neuron{N}/n{N}-l{k}.tsv`` (the folder must exist)."""
    coo = w.tocoo()
    order = np.lexsort((coo.col, coo.row))
    path = Path(root) / f"neuron{neurons}" / f"n{neurons}-l{k}.tsv"
    _write_tsv(path, coo.row[order], coo.col[order], coo.data[order])


def tsv_folder(root: Path, neurons: int) -> Path:
    """``root/neuron{N}`` made ready for TSV layers: created, a binary header there removed
    (it would win over the new files)."""
    folder = output_folder(Path(root) / f"neuron{neurons}")
    try:
        (folder / HEADER).unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write {folder}: {exc.strerror or exc}") from None
    return folder


def write_network(root: Path, network: Network) -> None:
    """Write ``neuron{N}/n{N}-l{k}.tsv`` for every layer."""
    tsv_folder(root, network.neurons)
    for k, w in enumerate(network.layers, start=1):
        write_layer(root, network.neurons, k, w)


def write_images(root: Path, images: Images) -> None:
    """Write ``sparse-images-{N}.tsv`` and one categories file per known truth depth."""
    n = int(images.matrix.shape[1])
    coo = images.matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))
    root = output_folder(Path(root))
    _write_tsv(root / f"sparse-images-{n}.tsv", coo.row[order], coo.col[order], coo.data[order])
    for depth, ids in images.truth.items():
        text = "".join(f"{int(i)}\n" for i in ids)
        path = root / f"neuron{n}-l{depth}-categories.tsv"
        try:
            path.write_text(text)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
