"""Arrays and JSON from outside (store files, frames): read with bounds, checked before use.

Why not ``np.load``: it allocates whatever an npy header announces before reading a byte of data
(a 100-byte member claiming 2**40 elements is a MemoryError, or an overcommitted allocation), and it
inflates compressed npz members and reads overlapping ones without limit. Here an array is never
larger than the bytes actually present, npz members must be stored as ``np.savez`` writes them,
and only the dtypes the caller names are accepted. It is also faster on shards (hundreds of small
headers matched by one regex instead of ``ast.literal_eval``).

The checks (:func:`check_index`, :func:`check_finite`, the JSON field readers) are what every
index and value array gets before a compiled kernel, which does no bounds checks, sees it.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
from collections.abc import Collection
from typing import Any

import numpy as np

from fsd.errors import FsdError, InputError

__all__ = [
    "check_finite",
    "check_index",
    "describe",
    "json_float",
    "json_int",
    "npy_header",
    "npy_header_end",
    "read_npy",
    "read_npz",
]

_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 1 << 16
# the header np.save writes for a 1-D array; anything else goes through numpy's own (slower) parser
_HEADER = re.compile(
    rb"\{'descr': '([<|][a-z][0-9]{1,2})', 'fortran_order': False, 'shape': \(([0-9]{1,19}),\), \}"
    rb" *\n"
)


def describe(a: object) -> str:
    """A short description of what arrived (for error messages; never the contents)."""
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _header(head: memoryview, what: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
    """Dtype and shape from an npy header, by numpy's parser (literal_eval, nothing executed)."""
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=_MAX_HEADER)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=_MAX_HEADER)
    except (ValueError, TypeError, SyntaxError) as exc:
        raise InputError(f"{what}: bad npy header: {exc}") from None
    return dtype, shape


def npy_header_end(prefix: bytes | memoryview, what: str) -> int:
    """Where the header of the npy array whose bytes begin with ``prefix`` (12 of them say it)
    ends, or InputError: a stream reads no more of a header than this bound allows."""
    mv = memoryview(prefix).cast("B")
    if len(mv) < 10 or bytes(mv[:6]) != _MAGIC:
        raise InputError(f"{what}: not an npy array")
    if mv[6] == 1:
        start, size = 10, int.from_bytes(mv[8:10], "little")
    elif mv[6] in (2, 3) and len(mv) >= 12:
        start, size = 12, int.from_bytes(mv[8:12], "little")
    else:
        raise InputError(f"{what}: unsupported npy version {mv[6]}")
    if size > _MAX_HEADER:
        raise InputError(f"{what}: npy header of {size} bytes does not fit")
    return start + size


def npy_header(
    raw: bytes | memoryview, what: str, dtypes: Collection[np.dtype[Any]]
) -> tuple[np.dtype[Any], int, int]:
    """Dtype, length and data offset of the 1-D npy array of one of ``dtypes`` whose bytes begin
    with ``raw`` (its header whole, and maybe more), or InputError."""
    mv = memoryview(raw).cast("B")
    end = npy_header_end(mv, what)
    start = 10 if mv[6] == 1 else 12
    if end > len(mv):
        raise InputError(f"{what}: npy header of {end - start} bytes does not fit")
    match = _HEADER.fullmatch(mv[start:end])
    if match is not None:
        try:
            dtype: np.dtype[Any] = np.dtype(match[1].decode())
        except TypeError:
            raise InputError(f"{what}: unknown dtype {match[1]!r}") from None
        shape: tuple[int, ...] = (int(match[2]),)
    else:
        dtype, shape = _header(mv[:end], what)
    if dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise InputError(f"{what}: dtype {dtype} is not one of {allowed}")
    if len(shape) != 1:
        raise InputError(f"{what}: shape {shape} is not 1-D")
    return dtype, shape[0], end


def read_npy(raw: bytes | memoryview, what: str, dtypes: Collection[np.dtype[Any]]) -> np.ndarray:
    """A writable 1-D array of one of ``dtypes`` from npy bytes, or InputError.

    The announced length must match the bytes present exactly, so nothing is allocated that
    the data does not already occupy.
    """
    mv = memoryview(raw).cast("B")
    dtype, count, end = npy_header(mv, what, dtypes)
    if count * dtype.itemsize != len(mv) - end:
        raise InputError(
            f"{what}: announces {count} x {dtype} but holds {len(mv) - end} bytes of data"
        )
    return np.frombuffer(mv, dtype, count, end).copy()


def read_npz(
    data: bytes, what: str, dtypes: Collection[np.dtype[Any]], max_members: int = 1 << 20
) -> dict[str, np.ndarray]:
    """Every member of an npz file as :func:`read_npy` reads it, or InputError.

    Members must be stored uncompressed (as ``np.savez`` writes them) and must not overlap:
    together they hold at most ``len(data)`` bytes, so a small file cannot inflate.
    """
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise InputError(f"{what}: {len(infos)} members (at most {max_members})")
            if sum(info.file_size for info in infos) > len(data):
                raise InputError(
                    f"{what}: members hold more bytes than the file (compressed or overlapping)"
                )
            for info in infos:
                name = info.filename
                if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
                    raise InputError(f"{what}: member {name!r} is compressed or encrypted")
                key = name[:-4]
                if not name.endswith(".npy") or key in arrays:
                    raise InputError(f"{what}: unexpected or repeated member {name!r}")
                arrays[key] = read_npy(zf.read(info), f"{what}: {key}", dtypes)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise InputError(f"{what}: not a valid npz file: {type(exc).__name__}: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # zipfile: unsupported feature
        raise InputError(f"{what}: unsupported npz file: {exc}") from None
    return arrays


def check_index(what: str, a: object, bound: int, error: type[FsdError]) -> None:
    """``a`` is a 1-D integer array (not bool, not float) with every value in [0, bound)."""
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "ui":
        raise error(f"{what}: expected a 1-D integer array, got {describe(a)}")
    if not len(a):
        return
    if a.dtype.kind == "i":
        low = int(a.min())
        if low < 0:
            raise error(f"{what}: negative index {low}")
    high = int(a.max())
    if high >= bound:
        raise error(f"{what}: index {high} out of range (< {bound})")


def check_finite(what: str, a: np.ndarray, error: type[FsdError]) -> None:
    """Every value of the float array ``a`` is finite (one pass without allocation when so)."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = a.sum(dtype=np.float64)
    if not math.isfinite(total) and not np.isfinite(a).all():
        raise error(f"{what}: values must be finite")


def json_int(value: object, what: str, lo: int, hi: int, error: type[FsdError] = InputError) -> int:
    """A JSON integer (not a bool, not a float) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise error(f"{what}={value} is outside {lo}..{hi}")
    return value


def json_float(
    value: object, what: str, lo: float, hi: float, error: type[FsdError] = InputError
) -> float:
    """A finite JSON number (int or float, not a bool) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    if not (math.isfinite(x) and lo <= x <= hi):
        raise error(f"{what}={value} is not finite or outside {lo}..{hi}")
    return x
