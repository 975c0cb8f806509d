"""Graph Challenge TSV layout: read (fast path + precise errors), write, and a binary cache.

Layout (1-based ids, tab separated, optionally gzipped)::

    neuron{N}/n{N}-l{k}.tsv          row col weight   (layer k, edge row -> col)
    sparse-images-{N}.tsv            image pixel value
    neuron{N}-l{L}-categories.tsv    1-based ids of images alive after L layers
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fsd.errors import InputError, ModelFormatError
from fsd.model.network import Images, Network, bias_for

log = logging.getLogger(__name__)

_NEURON_DIR = re.compile(r"^neuron(\d+)$")
_LAYER_FILE = re.compile(r"^n(\d+)-l(\d+)\.tsv(\.gz)?$")
_CATEGORIES = re.compile(r"^neuron(\d+)-l(\d+)-categories\.tsv(\.gz)?$")
CACHE_VERSION = 1


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


def _locate_error(
    path: Path, ncols: int, int_cols: int, limits: tuple[int, ...]
) -> ModelFormatError:
    """Slow scan that finds the first bad line, used only after the fast parser refused the file."""
    for lineno, line in enumerate(_open_text(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != ncols:
            return ModelFormatError(path, lineno, f"expected {ncols} fields, found {len(fields)}")
        for pos, text in enumerate(fields):
            try:
                value = float(text)
            except ValueError:
                return ModelFormatError(path, lineno, f"field {pos + 1} is not a number: {text!r}")
            if not np.isfinite(value):
                return ModelFormatError(path, lineno, f"field {pos + 1} is not finite: {text!r}")
            if pos < int_cols:
                if value != int(value):
                    return ModelFormatError(path, lineno, f"field {pos + 1} is not an integer id")
                limit = limits[pos]
                if not 1 <= value <= limit:
                    return ModelFormatError(
                        path, lineno, f"id {int(value)} in field {pos + 1} is outside 1..{limit}"
                    )
    return ModelFormatError(path, None, "unreadable file")


def read_triples(path: Path, limits: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``row col value`` lines as 0-based int64 ids and float64 values; every line validated."""
    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            header=None,
            names=["r", "c", "v"],
            dtype=np.float64,
            engine="c",
            index_col=False,
        )
    except pd.errors.EmptyDataError:
        raise ModelFormatError(path, None, "file is empty") from None
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
        raise _locate_error(path, 3, 2, limits) from None
    except OSError as exc:
        raise ModelFormatError(path, None, f"cannot read: {exc}") from None
    if frame.empty:
        raise ModelFormatError(path, None, "file is empty")
    data = frame.to_numpy()
    rows, cols, vals = data[:, 0], data[:, 1], data[:, 2]
    bad = (
        ~np.isfinite(data).all(axis=1)
        | (rows != np.floor(rows))
        | (cols != np.floor(cols))
        | (rows < 1)
        | (rows > limits[0])
        | (cols < 1)
        | (cols > limits[1])
    )
    if bad.any():
        raise _locate_error(path, 3, 2, limits)
    return rows.astype(np.int64) - 1, cols.astype(np.int64) - 1, vals


def _csr(
    rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def find_neurons(root: Path) -> list[int]:
    """Sizes N of the ``neuron{N}`` folders under ``root``."""
    if not root.is_dir():
        raise InputError(f"data folder not found: {root}")
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _NEURON_DIR.match(p.name)))


def available_layers(root: Path, neurons: int) -> int:
    """How many consecutive layers 1..L exist for ``neurons``."""
    folder = root / f"neuron{neurons}"
    if not folder.is_dir():
        raise InputError(f"network folder not found: {folder}")
    present = {
        int(m.group(2))
        for p in folder.iterdir()
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
        digest.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    base = Path(os.environ.get("FSD_CACHE_DIR", Path.home() / ".cache" / "fsd"))
    return base / f"net-{digest.hexdigest()[:24]}.npz"


def _load_cache(path: Path, neurons: int, depth: int) -> list[sp.csr_matrix] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return [
                sp.csr_matrix((npz[f"x{k}"], npz[f"i{k}"], npz[f"p{k}"]), shape=(neurons, neurons))
                for k in range(depth)
            ]
    except (OSError, KeyError, ValueError) as exc:
        log.debug("cache %s unusable: %s", path, exc)
        return None


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


def load_network(
    root: Path, neurons: int | None = None, layers: int | None = None, cache: bool = True
) -> Network:
    """Load the official layout; repeat loads of unchanged files come from a binary cache."""
    root = Path(root)
    if neurons is None:
        sizes = find_neurons(root)
        if len(sizes) != 1:
            found = ", ".join(map(str, sizes)) or "none"
            raise InputError(f"cannot infer --neurons in {root}: neuron folders found: {found}")
        neurons = sizes[0]
    depth = available_layers(root, neurons)
    if layers is not None:
        if layers < 1:
            raise InputError(f"--layers must be >= 1, got {layers}")
        if layers > depth:
            layer_path(root, neurons, depth + 1)  # raises: names the first missing file
        depth = layers
    paths = [layer_path(root, neurons, k) for k in range(1, depth + 1)]
    cached = _load_cache(_cache_file(paths), neurons, depth) if cache else None
    if cached is not None:
        mats = cached
    else:
        mats = []
        for path in paths:
            rows, cols, vals = read_triples(path, (neurons, neurons))
            mats.append(_csr(rows, cols, vals, (neurons, neurons)))
        if cache:
            _save_cache(_cache_file(paths), mats)
    return Network(mats, bias_for(neurons), name=f"graphchallenge-{neurons}x{depth}")


def read_categories(path: Path) -> np.ndarray:
    """Sorted 1-based image ids from a categories file."""
    ids: list[int] = []
    for lineno, line in enumerate(_open_text(path), start=1):
        text = line.strip()
        if not text:
            continue
        try:
            value = int(text)
        except ValueError:
            raise ModelFormatError(path, lineno, f"not an image id: {text!r}") from None
        if value < 1:
            raise ModelFormatError(path, lineno, f"image id {value} is not >= 1")
        ids.append(value)
    return np.unique(np.asarray(ids, dtype=np.int64))


def load_images(root: Path, neurons: int, count: int | None = None) -> Images:
    """Load ``sparse-images-{N}`` (optionally only the first ``count``) and every truth file."""
    root = Path(root)
    base = root / f"sparse-images-{neurons}.tsv"
    path = _existing(base)
    if path is None:
        raise InputError(f"image file missing: {base}[.gz]")
    rows, cols, vals = read_triples(path, (2**31 - 1, neurons))
    total = int(rows.max()) + 1
    if count is not None:
        if count < 1:
            raise InputError(f"--images must be >= 1, got {count}")
        if count > total:
            raise InputError(f"--images {count} but {path} holds only {total} images")
    matrix = _csr(rows, cols, vals, (total, neurons))
    truth: dict[int, np.ndarray] = {}
    for p in root.iterdir():
        m = _CATEGORIES.match(p.name)
        if m and int(m.group(1)) == neurons:
            truth[int(m.group(2))] = read_categories(p)
    images = Images(matrix, truth)
    return images.head(count) if count is not None else images


def _write_tsv(path: Path, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
    frame = pd.DataFrame({"r": rows + 1, "c": cols + 1, "v": vals})
    frame.to_csv(path, sep="\t", header=False, index=False, float_format="%.17g")


def write_network(root: Path, network: Network) -> None:
    """Write ``neuron{N}/n{N}-l{k}.tsv`` for every layer."""
    n = network.neurons
    folder = Path(root) / f"neuron{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for k, w in enumerate(network.layers, start=1):
        coo = w.tocoo()
        order = np.lexsort((coo.col, coo.row))
        _write_tsv(folder / f"n{n}-l{k}.tsv", coo.row[order], coo.col[order], coo.data[order])


def write_images(root: Path, images: Images) -> None:
    """Write ``sparse-images-{N}.tsv`` and one categories file per known truth depth."""
    n = int(images.matrix.shape[1])
    coo = images.matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _write_tsv(root / f"sparse-images-{n}.tsv", coo.row[order], coo.col[order], coo.data[order])
    for depth, ids in images.truth.items():
        text = "".join(f"{int(i)}\n" for i in ids)
        (root / f"neuron{n}-l{depth}-categories.tsv").write_text(text)
