"""fsd's own binary message format for activations moving between workers.

Why not pickle (or any general serializer): frames cross untrusted transports (NATS, S3, sockets),
and unpickling runs code chosen by whoever wrote the bytes. This format carries only a fixed
header and flat 1-D numeric arrays, so decoding is pure validation: every field is checked and
anything malformed raises :class:`~fsd.errors.WireError`.

Why this layout: array data is never copied on decode (arrays are read-only ``np.frombuffer``
views into the frame) and each array starts at a multiple of 8 bytes from the frame start, so the
views are aligned for numba kernels. Frames larger than a transport's size limit are cut with
:func:`split` and put back together with :class:`Reassembler`.

Frame = header (``HEADER_SIZE`` bytes, little-endian)::

    magic b"FSD1" | version u8 | kind u8 | flags u8 | reserved u8 (0) | run 16 bytes
    | layer u32 | src i32 | dst i32 | chunk u32 | nchunks u32 | body_length u64

Body of an unchunked frame (``nchunks == 1``)::

    narrays u32 | narrays x (dtype code u8, 7 zero bytes, length u64 in elements)
    | each array's little-endian data, zero-padded to a multiple of 8 bytes

A chunk frame's body is one consecutive piece of the unchunked body.

Sealing: on a channel every frame (each chunk frame, too) travels sealed, followed by a
``TAG_SIZE``-byte HMAC-SHA256 of everything before it under the run's frame key
(:func:`fsd.auth.frame_key`). :func:`unseal` checks the tag in constant time before anything else
looks at the bytes, so a frame nobody with the key made is dropped before its header is parsed.

Compression (flag bit 1, ``FLAG_ZSTD``): the body after the header is one zstd frame of the body
above. ``encode(msg, compress=True)`` uses it only when it pays (at least ``COMPRESS_MIN`` bytes and
10% smaller); activations compress very well because live images saturate at YMAX. Decoding clears
the bit, so a message compares equal whether or not it travelled compressed.
"""

from __future__ import annotations

import dataclasses
import enum
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from fsd.errors import WireError

__all__ = [
    "COMPRESS_MIN",
    "FLAG_ERROR",
    "FLAG_ZSTD",
    "HEADER_SIZE",
    "RUN_ID_BYTES",
    "SUPPORTED_DTYPES",
    "TAG_SIZE",
    "Header",
    "Kind",
    "Message",
    "Reassembler",
    "decode",
    "encode",
    "frame_length",
    "peek_header",
    "seal",
    "split",
    "unseal",
]


class Kind(enum.IntEnum):
    """What a message is for; decides who sends it to whom."""

    INPUT = 1  # coordinator -> worker: its slice of the input images
    ACT = 2  # worker -> worker: activations for one layer
    RESULT = 3  # worker -> coordinator: final rows + metrics (or an error report)
    ABORT = 4  # coordinator -> worker: the run failed, stop now (no arrays)


MAGIC = b"FSD1"
VERSION = 1
RUN_ID_BYTES = 16
FLAG_ERROR = 1
"""Flag bit 0: a RESULT that reports a failure instead of rows."""
FLAG_ZSTD = 2
"""Flag bit 1: the body is zstd-compressed (set by encode, cleared by decode)."""
_KNOWN_FLAGS = FLAG_ERROR | FLAG_ZSTD
COMPRESS_MIN = 2048
"""Bodies smaller than this are sent as they are: compressing them saves less than it costs."""
MAX_BODY = 1 << 30
"""Largest decompressed body accepted (a small hostile frame must not inflate without bound)."""

_U32_MAX = 2**32 - 1
_I32_MIN = -(2**31)
_I32_MAX = 2**31 - 1
_ALIGN = 8
_ZEROS = bytes(_ALIGN)

_HEADER = struct.Struct("<4sBBBB16sIiiIIQ")
_COUNT = struct.Struct("<I")
_DESC = struct.Struct("<B7sQ")
_DESC_PAD = bytes(7)

HEADER_SIZE: int = _HEADER.size
"""Fixed size of the frame header in bytes."""
TAG_SIZE = 32
"""Size of the HMAC-SHA256 tag that follows a sealed frame."""

_CODE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    1: np.dtype("<u1"),
    2: np.dtype("<u2"),
    3: np.dtype("<u4"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<f4"),
    7: np.dtype("<f8"),
}
_KEY_TO_CODE: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()
}
SUPPORTED_DTYPES: tuple[np.dtype[Any], ...] = tuple(_CODE_TO_DTYPE.values())
"""Array dtypes a frame can carry, as stored on the wire (little-endian)."""


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"header {name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise WireError(f"header {name}={value} is outside {lo}..{hi}")


@dataclass(frozen=True)
class Header:
    """Routing fields of a frame; validated on construction so a bad header can't be sent."""

    kind: Kind
    run: bytes
    layer: int
    src: int
    dst: int
    chunk: int = 0
    nchunks: int = 1
    flags: int = 0

    def __post_init__(self) -> None:
        try:
            kind = Kind(self.kind)
        except ValueError:
            raise WireError(f"unknown message kind {self.kind!r}") from None
        object.__setattr__(self, "kind", kind)
        if not isinstance(self.run, bytes) or len(self.run) != RUN_ID_BYTES:
            got = len(self.run) if isinstance(self.run, bytes) else type(self.run).__name__
            raise WireError(f"run id must be {RUN_ID_BYTES} bytes, got {got}")
        _check_int("layer", self.layer, 0, _U32_MAX)
        _check_int("src", self.src, _I32_MIN, _I32_MAX)
        _check_int("dst", self.dst, _I32_MIN, _I32_MAX)
        _check_int("nchunks", self.nchunks, 1, _U32_MAX)
        _check_int("chunk", self.chunk, 0, self.nchunks - 1)
        _check_int("flags", self.flags, 0, 0xFF)
        if self.flags & ~_KNOWN_FLAGS:
            raise WireError(f"header flags {self.flags:#04x} set reserved bits")


@dataclass(eq=False)
class Message:
    """A header plus flat numeric arrays; equality compares dtypes and exact bits."""

    header: Header
    arrays: list[npt.NDArray[Any]]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        if self.header != other.header or len(self.arrays) != len(other.arrays):
            return False
        return all(_same_bits(a, b) for a, b in zip(self.arrays, other.arrays, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable: arrays can change


def _same_bits(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """Wire-level equality: same dtype up to byte order, same shape, identical bytes (NaN-safe)."""
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    if a.shape != b.shape or (a.dtype.kind, a.dtype.itemsize) != (b.dtype.kind, b.dtype.itemsize):
        return False
    le = a.dtype.newbyteorder("<")
    return np.ascontiguousarray(a, le).tobytes() == np.ascontiguousarray(b, le).tobytes()


def _pack_header(h: Header, body_length: int) -> bytes:
    return _HEADER.pack(
        MAGIC,
        VERSION,
        h.kind,
        h.flags,
        0,
        h.run,
        h.layer,
        h.src,
        h.dst,
        h.chunk,
        h.nchunks,
        body_length,
    )


def _wire_array(i: int, arr: object) -> tuple[int, npt.NDArray[Any]]:
    """Dtype code and a contiguous little-endian version of ``arr`` (no copy when already so)."""
    if not isinstance(arr, np.ndarray):
        raise WireError(f"array {i} is a {type(arr).__name__}, not a numpy array")
    if arr.ndim != 1:
        raise WireError(f"array {i} has shape {arr.shape}; only 1-D arrays can be sent")
    dt = arr.dtype
    code = None if dt.fields is not None else _KEY_TO_CODE.get((dt.kind, dt.itemsize))
    if code is None:
        supported = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise WireError(f"array {i} has unsupported dtype {dt}; supported: {supported}")
    return code, np.ascontiguousarray(arr, dtype=_CODE_TO_DTYPE[code])


_ZSTD_LEVEL = 1  # measured on the shared net's activations: level 3 is 4% smaller, 25% slower


def encode(msg: Message, compress: bool = False) -> bytes:
    """One unchunked frame for ``msg``; with ``compress``, zstd when it pays (see module doc)."""
    h = msg.header
    if not isinstance(h, Header):
        raise WireError(f"message header is a {type(h).__name__}, not a Header")
    if h.chunk != 0 or h.nchunks != 1:
        raise WireError(f"encode needs chunk=0, nchunks=1 (got {h.chunk}/{h.nchunks}); use split")
    arrays = [_wire_array(i, a) for i, a in enumerate(msg.arrays)]
    if len(arrays) > _U32_MAX:
        raise WireError(f"too many arrays: {len(arrays)}")
    descs = bytearray(_COUNT.pack(len(arrays)))
    data: list[bytes | memoryview] = []
    body_length = _COUNT.size + _DESC.size * len(arrays)
    for code, a in arrays:
        descs += _DESC.pack(code, _DESC_PAD, a.size)
        pad = -a.nbytes % _ALIGN
        data.append(a.data)
        if pad:
            data.append(_ZEROS[:pad])
        body_length += a.nbytes + pad
    if compress and body_length >= COMPRESS_MIN:
        packed = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(b"".join([descs, *data]))
        if len(packed) * 10 <= body_length * 9:
            flagged = dataclasses.replace(h, flags=h.flags | FLAG_ZSTD)
            return b"".join([_pack_header(flagged, len(packed)), packed])
    return b"".join([_pack_header(h, body_length), descs, *data])


def _inflate(mv: memoryview, header: Header) -> tuple[memoryview, Header]:
    """The uncompressed frame of a FLAG_ZSTD frame, and its header without the flag."""
    packed = mv[HEADER_SIZE:]
    try:
        size = zstandard.frame_content_size(packed)
        if not 0 <= size <= MAX_BODY:  # -1: unknown size, which encode never produces
            raise WireError(f"compressed body announces {size} bytes (limit {MAX_BODY})")
        body = zstandard.ZstdDecompressor().decompress(packed)
    except zstandard.ZstdError as exc:
        raise WireError(f"compressed body does not decompress: {exc}") from None
    plain = dataclasses.replace(header, flags=header.flags & ~FLAG_ZSTD)
    return memoryview(b"".join([_pack_header(plain, len(body)), body])), plain


def _as_view(frame: object) -> memoryview:
    """A flat byte view of any contiguous buffer, or WireError."""
    try:
        return memoryview(frame).cast("B")  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise WireError(f"frame must be a contiguous bytes-like object: {e}") from None


def _parse_header(mv: memoryview) -> tuple[Header, int]:
    """Validated header and its announced body length; doesn't look past the header."""
    if len(mv) < HEADER_SIZE:
        raise WireError(f"truncated frame: {len(mv)} bytes, the header alone is {HEADER_SIZE}")
    (magic, version, kind, flags, reserved, run, layer, src, dst, chunk, nchunks, body_length) = (
        _HEADER.unpack_from(mv, 0)
    )
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}: not an fsd frame (expected {MAGIC!r})")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version} (this fsd speaks {VERSION})")
    if reserved != 0:
        raise WireError(f"reserved header byte is {reserved}, must be 0")
    header = Header(kind, run, layer, src, dst, chunk, nchunks, flags)
    return header, body_length


def _peek(mv: memoryview) -> Header:
    header, body_length = _parse_header(mv)
    actual = len(mv) - HEADER_SIZE
    if body_length != actual:
        what = "truncated frame" if body_length > actual else "trailing bytes after frame"
        raise WireError(f"{what}: header announces a {body_length}-byte body, got {actual}")
    return header


def peek_header(frame: bytes | bytearray | memoryview) -> Header:
    """Validate just the header (and that the body length matches), e.g. to route a frame."""
    return _peek(_as_view(frame))


def frame_length(prefix: bytes | bytearray | memoryview) -> int:
    """Total frame size announced by its first ``HEADER_SIZE`` bytes, for stream transports."""
    mv = _as_view(prefix)
    _, body_length = _parse_header(mv[:HEADER_SIZE])
    return HEADER_SIZE + body_length


def _aligned(mv: memoryview) -> memoryview:
    """``mv`` itself if it starts on an 8-byte boundary, else an aligned copy (rare)."""
    raw = np.frombuffer(mv, dtype=np.uint8)
    if raw.ctypes.data % _ALIGN == 0:
        return mv
    backing = np.empty((len(mv) + _ALIGN - 1) // _ALIGN, dtype=np.uint64)
    copy = backing.view(np.uint8)[: len(mv)]
    copy[:] = raw
    return copy.data


def decode(frame: bytes | bytearray | memoryview) -> Message:
    """Validate a whole unchunked frame and return read-only, aligned views into it (no copy).

    The arrays share memory with ``frame``: don't mutate a bytearray after decoding it.
    """
    mv = _as_view(frame)
    header = _peek(mv)
    if header.nchunks != 1:
        raise WireError(
            f"frame is chunk {header.chunk} of {header.nchunks}; feed chunks to a Reassembler"
        )
    if header.flags & FLAG_ZSTD:
        mv, header = _inflate(mv, header)
    ro = _aligned(mv).toreadonly()
    end = len(ro)
    pos = HEADER_SIZE
    if end - pos < _COUNT.size:
        raise WireError(f"truncated body: {end - pos} bytes, too short for the array count")
    (narrays,) = _COUNT.unpack_from(ro, pos)
    pos += _COUNT.size
    room = (end - pos) // _DESC.size
    if narrays > room:
        raise WireError(f"body claims {narrays} arrays but has room for at most {room}")
    descs: list[tuple[np.dtype[Any], int]] = []
    for i in range(narrays):
        code, pad, length = _DESC.unpack_from(ro, pos)
        pos += _DESC.size
        dt = _CODE_TO_DTYPE.get(code)
        if dt is None:
            raise WireError(f"array {i} has unknown dtype code {code}")
        if pad != _DESC_PAD:
            raise WireError(f"array {i} descriptor has nonzero padding")
        descs.append((dt, length))
    arrays: list[npt.NDArray[Any]] = []
    for i, (dt, length) in enumerate(descs):
        nbytes = length * dt.itemsize
        padded = nbytes + (-nbytes % _ALIGN)
        if padded > end - pos:
            raise WireError(
                f"array {i} ({length} x {dt.name}) needs {padded} bytes at offset {pos}, "
                f"frame has {end - pos} left"
            )
        arrays.append(np.frombuffer(ro, dtype=dt, count=length, offset=pos))
        if any(ro[pos + nbytes : pos + padded]):
            raise WireError(f"array {i} is followed by nonzero padding")
        pos += padded
    if pos != end:
        raise WireError(f"{end - pos} trailing bytes after the last array")
    return Message(header, arrays)


def split(frame: bytes | bytearray | memoryview, limit: int) -> list[bytes]:
    """Cut a frame into chunk frames of at most ``limit`` bytes each, for size-capped transports."""
    _check_limit(limit)
    mv = _as_view(frame)
    header = _peek(mv)
    if header.nchunks != 1:
        raise WireError(f"frame is already chunk {header.chunk} of {header.nchunks}")
    if len(mv) <= limit:
        return [frame if isinstance(frame, bytes) else mv.tobytes()]
    body = mv[HEADER_SIZE:]
    piece = limit - HEADER_SIZE
    n = -(-len(body) // piece)
    if n > _U32_MAX:
        raise WireError(f"limit {limit} would need {n} chunks, more than a u32 can count")
    chunks = []
    for i in range(n):
        part = body[i * piece : (i + 1) * piece]
        h = dataclasses.replace(header, chunk=i, nchunks=n)
        chunks.append(b"".join([_pack_header(h, len(part)), part]))
    return chunks


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= HEADER_SIZE:
        raise WireError(f"chunk limit must be an int > HEADER_SIZE ({HEADER_SIZE}), got {limit!r}")


_GroupKey = tuple[Kind, bytes, int, int, int, int]


@dataclass
class _Group:
    nchunks: int
    pieces: dict[int, bytes] = dataclasses.field(default_factory=dict)
    size: int = HEADER_SIZE


class Reassembler:
    """Collects chunk frames (in any order, duplicates allowed) back into whole messages.

    Chunks are grouped by (kind, run, layer, src, dst, flags); a group's nchunks is fixed by its
    first chunk. Each group may hold at most ``max_message_bytes`` (reassembled frame size) so a
    hostile sender can't exhaust memory with one message. Keys of the last
    ``remember_completed`` finished (or rejected) groups are kept so late redeliveries of their
    chunks are ignored instead of starting a group that never completes.
    """

    def __init__(self, max_message_bytes: int = 1 << 30, remember_completed: int = 4096) -> None:
        self._max = max_message_bytes
        self._remember = remember_completed
        self._groups: dict[_GroupKey, _Group] = {}
        self._done: OrderedDict[_GroupKey, None] = OrderedDict()

    @property
    def pending(self) -> int:
        """Number of partially received messages."""
        return len(self._groups)

    def _finish(self, key: _GroupKey) -> None:
        self._groups.pop(key, None)
        self._done[key] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)

    def add(self, frame: bytes | bytearray | memoryview) -> Message | None:
        """The whole message once its last missing chunk arrives, else None."""
        mv = _as_view(frame)
        header = _peek(mv)
        if header.nchunks == 1:
            return decode(mv)
        key: _GroupKey = (
            header.kind,
            header.run,
            header.layer,
            header.src,
            header.dst,
            header.flags,
        )
        if key in self._done:
            return None
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(header.nchunks)
        elif group.nchunks != header.nchunks:
            raise WireError(
                f"chunk {header.chunk} says {header.nchunks} chunks, "
                f"earlier chunks of the same message said {group.nchunks}"
            )
        if header.chunk in group.pieces:
            return None
        size = group.size + len(mv) - HEADER_SIZE
        if size > self._max:
            self._finish(key)
            raise WireError(
                f"reassembled message would exceed max_message_bytes={self._max}; dropped it"
            )
        group.pieces[header.chunk] = mv[HEADER_SIZE:].tobytes()
        group.size = size
        if len(group.pieces) < group.nchunks:
            return None
        self._finish(key)
        whole = dataclasses.replace(header, chunk=0, nchunks=1)
        parts = [group.pieces[i] for i in range(group.nchunks)]
        return decode(b"".join([_pack_header(whole, size - HEADER_SIZE), *parts]))


def seal(frame: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """``frame`` followed by its HMAC-SHA256 tag under ``key`` (see the module doc)."""
    return b"".join([frame, hmac.digest(key, frame, "sha256")])


def unseal(data: bytes | bytearray | memoryview, key: bytes) -> memoryview:
    """The frame inside a sealed ``data`` once its tag verifies under ``key``, else WireError.

    Only the tag is checked here (in constant time); the frame itself is validated by
    :func:`peek_header` / :func:`decode` afterwards, as any frame is.
    """
    mv = _as_view(data)
    if len(mv) < HEADER_SIZE + TAG_SIZE:
        raise WireError(f"{len(mv)} bytes: too short for a sealed frame")
    frame = mv[:-TAG_SIZE]
    if not hmac.compare_digest(hmac.digest(key, frame, "sha256"), mv[-TAG_SIZE:]):
        raise WireError("the frame's MAC does not verify (forged, damaged or another run's)")
    return frame
