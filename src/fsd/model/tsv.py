"""Graph Challenge TSV layout: read (fast path + precise errors), write, and a binary cache.

Layout (1-based ids, tab separated, optionally gzipped; a ``neuron{N}`` folder holding
``layers.json`` is a binary model instead, see :mod:`fsd.model.layers`)::

    neuron{N}/n{N}-l{k}.tsv          row col weight   (layer k, edge row -> col)
    sparse-images-{N}.tsv            image pixel value
    neuron{N}-l{L}-categories.tsv    1-based ids of images alive after L layers

Every file is input from outside: ids are bounded by the declared sizes (and sizes by the caps of
:mod:`fsd.model.network`) before anything sized by them is allocated, values must be finite in
the engine's dtype, duplicate entries are refused, and every problem is a
:class:`~fsd.errors.ModelFormatError` naming file and line. The binary cache is checked as
strictly as the text files; an unusable cache is rebuilt.
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fsd import settings
from fsd.errors import InputError, ModelFormatError
from fsd.model.layers import HEADER, LayerFolder, is_layer_folder
from fsd.model.network import MAX_IMAGES, MAX_NEURONS, Images, Network, bias_for

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


def _existing(base: Path) -> Path | None:
    """``base`` or ``base.gz``, whichever exists."""
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        yield from fh


def finite_in(values: np.ndarray, dtype: np.dtype[np.floating] | str) -> np.ndarray:
    """Which ``values`` stay finite once cast to ``dtype`` (1e308 is finite in float64 only)."""
    with np.errstate(over="ignore", invalid="ignore"):
        result: np.ndarray = np.isfinite(np.asarray(values).astype(dtype, copy=False))
    return result


def _scan(
    path: Path,
    limits: tuple[int, int],
    dtype: np.dtype[np.floating],
    duplicates: bool = False,
    hint: str = "",
) -> ModelFormatError:
    """Slow scan that finds the first bad line, used only after the fast path refused the file.

    ``hint`` is added to the message of an id above ``limits[0]``.
    """
    seen: dict[tuple[int, int], int] = {}
    lineno = 0
    try:
        for lineno, line in enumerate(_open_text(path), start=1):
            fields = line.split()
            if not fields:
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
            if duplicates:
                key = (int(float(fields[0])), int(float(fields[1])))
                first = seen.setdefault(key, lineno)
                if first != lineno:
                    return ModelFormatError(
                        path, lineno, f"duplicate entry {key[0]} {key[1]} (first on line {first})"
                    )
    except _GZIP_ERRORS as exc:
        return ModelFormatError(path, lineno + 1, f"corrupt or truncated gzip data: {exc}")
    except OSError as exc:
        return ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}")
    return ModelFormatError(path, None, "not tab-separated triples: row<TAB>col<TAB>value")


CHUNK_LINES = 1 << 22
"""Lines parsed at once (about 100 MB of float64 while parsed): a large file is never whole in
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
    unordered_keys: list[np.ndarray] = []
    try:
        chunks = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=["r", "c", "v"],
            dtype=np.float64,
            engine="c",
            index_col=False,
            chunksize=CHUNK_LINES,
        )
        with chunks:
            for frame in chunks:
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
                        unordered_keys = [kr * limits[1] + kc for kr, kc, _ in kept]
                    ordered = False
                if not ordered:
                    unordered_keys.append(keys)
                if below is not None:
                    keep = r < below
                    r, c, vals = r[keep], c[keep], vals[keep]
                kept.append((r, c, vals))
                if ordered and below is not None and int(rows[-1]) > below:
                    break  # sorted by row: every later line is past the rows kept
    except pd.errors.EmptyDataError:
        raise ModelFormatError(path, None, "file is empty") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, *_GZIP_ERRORS):
        raise _scan(path, limits, dtype, hint=hint) from None
    except OSError as exc:
        raise ModelFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if not kept:
        raise ModelFormatError(path, None, "file is empty")
    if not ordered:
        every = np.sort(np.concatenate(unordered_keys))
        if (every[1:] == every[:-1]).any():
            raise _scan(path, limits, dtype, duplicates=True)
    if len(kept) == 1:
        return (*kept[0], seen)
    return (
        np.concatenate([k[0] for k in kept]),
        np.concatenate([k[1] for k in kept]),
        np.concatenate([k[2] for k in kept]),
        seen,
    )


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


def _cache_file(paths: list[Path]) -> Path:
    digest = hashlib.sha256(str(CACHE_VERSION).encode())
    for p in paths:
        st = p.stat()
        digest.update(os.fsencode(p.resolve()))  # bytes: any path, UTF-8 or not
        digest.update(f"|{st.st_size}|{st.st_mtime_ns}|".encode())
    base = Path(settings.text(os.environ, "FSD_CACHE_DIR") or Path.home() / ".cache" / "fsd")
    return base / f"net-{digest.hexdigest()[:24]}.npz"


def _npz_array(zf: zipfile.ZipFile, name: str, kinds: str, budget: int) -> np.ndarray:
    """Member ``name`` of an npz as a 1-D array of one of the dtype ``kinds`` ("iu", "f").

    The header's shape must match the bytes actually stored, so a forged header cannot make us
    allocate more than the file holds; nothing is unpickled.
    """
    info = zf.getinfo(f"{name}.npy")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > budget:
        raise ValueError(f"{name}: not a stored member within the file")
    raw = zf.read(info)
    buf = io.BytesIO(raw)
    version = np.lib.format.read_magic(buf)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(buf)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(buf)
    else:
        raise ValueError(f"{name}: npy version {version}")
    if len(shape) != 1 or dtype.kind not in kinds or dtype.hasobject:
        raise ValueError(f"{name}: shape {shape}, dtype {dtype}")
    if shape[0] * dtype.itemsize != len(raw) - buf.tell():
        raise ValueError(f"{name}: header does not match the data")
    return np.frombuffer(raw, dtype, count=shape[0], offset=buf.tell()).copy()


def _load_cache(path: Path, neurons: int, depth: int) -> list[sp.csr_matrix] | None:
    """The cached layers, or None if the cache is missing or unusable in any way (then rebuilt).

    The cache is a file from outside like the TSVs: checked as strictly (shapes, ids in range,
    canonical CSR, finite values) and never allowed to allocate more than its own size.
    """
    if not path.is_file():
        return None
    mats = []
    try:
        budget = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            for k in range(depth):
                indptr = _npz_array(zf, f"p{k}", "iu", budget)
                if indptr.shape != (neurons + 1,) or indptr[0] != 0 or (np.diff(indptr) < 0).any():
                    raise ValueError(f"layer {k + 1}: bad indptr")
                indices = _npz_array(zf, f"i{k}", "iu", budget)
                data = _npz_array(zf, f"x{k}", "f", budget)
                if not indices.size == data.size == int(indptr[-1]):
                    raise ValueError(f"layer {k + 1}: sizes differ")
                if indices.size and (indices.min() < 0 or indices.max() >= neurons):
                    raise ValueError(f"layer {k + 1}: column outside 0..{neurons - 1}")
                if not np.isfinite(data).all():
                    raise ValueError(f"layer {k + 1}: values not finite")
                matrix = sp.csr_matrix((data, indices, indptr), shape=(neurons, neurons))
                if not matrix.has_canonical_format:
                    raise ValueError(f"layer {k + 1}: not canonical (unsorted or duplicates)")
                mats.append(matrix)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
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
) -> Network:
    """Load the official layout or a binary layer folder (``layers.json``, see
    :mod:`fsd.model.layers`); repeat loads of unchanged TSV files come from a binary cache.

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
    cached = _load_cache(_cache_file(paths), neurons, depth) if cache else None
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
            _save_cache(_cache_file(paths), mats)
    return Network(mats, bias_for(neurons), name=f"graphchallenge-{neurons}x{depth}")


def read_categories(path: Path, limit: int = MAX_IMAGE_ID) -> np.ndarray:
    """Sorted 1-based image ids from a categories file; each must lie in ``1..limit``."""
    ids: list[int] = []
    lineno = 0
    try:
        for lineno, line in enumerate(_open_text(path), start=1):
            text = line.strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                raise ModelFormatError(path, lineno, f"not an image id: {text[:40]!r}") from None
            if not 1 <= value <= limit:
                raise ModelFormatError(path, lineno, f"image id {value} is outside 1..{limit}")
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

    Without ``count`` every image is loaded, so ids are capped at ``MAX_IMAGES``; with it only
    rows 1..count are kept. Either way the matrix is sized by the cap or ``count``, never by an id.
    Pixel values must be finite in ``dtype``, the engine's.
    """
    root = Path(root)
    _check_neurons(neurons, str(root))
    if count is not None and not 1 <= count <= MAX_IMAGES:
        raise InputError(f"--images must be between 1 and {MAX_IMAGES}, got {count}")
    base = root / f"sparse-images-{neurons}.tsv"
    path = _existing(base)
    if path is None:
        raise InputError(f"image file missing: {base}[.gz]")
    if count is None:
        limits = (MAX_IMAGES, neurons)
        hint = f" (at most {MAX_IMAGES} images are read whole; --images K reads the first K)"
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
