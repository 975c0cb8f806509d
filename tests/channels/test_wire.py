"""Wire format: round trips, chunking and, above all, hostile bytes raising only WireError."""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsd.errors import WireError
from fsd.wire import (
    COMPRESS_MIN,
    FLAG_ERROR,
    FLAG_ZSTD,
    HEADER_SIZE,
    RUN_ID_BYTES,
    SUPPORTED_DTYPES,
    Header,
    Kind,
    Message,
    Reassembler,
    decode,
    encode,
    frame_length,
    peek_header,
    split,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Offsets of header fields, from the documented layout.
OFF_VERSION, OFF_KIND, OFF_FLAGS, OFF_RESERVED = 4, 5, 6, 7
OFF_RUN, OFF_LAYER, OFF_SRC, OFF_DST = 8, 24, 28, 32
OFF_CHUNK, OFF_NCHUNKS, OFF_BODY_LEN = 36, 40, 44
OFF_NARRAYS = HEADER_SIZE
OFF_DESC0 = HEADER_SIZE + 4

RUN = uuid.UUID(int=0x1234).bytes


def header_strategy() -> st.SearchStrategy[Header]:
    return st.builds(
        Header,
        kind=st.sampled_from(list(Kind)),
        run=st.binary(min_size=RUN_ID_BYTES, max_size=RUN_ID_BYTES),
        layer=st.integers(0, 2**32 - 1),
        src=st.integers(-(2**31), 2**31 - 1),
        dst=st.integers(-(2**31), 2**31 - 1),
        flags=st.sampled_from([0, FLAG_ERROR]),
    )


# Native, little- and big-endian variants of every supported dtype.
WIRE_DTYPES = [
    dt.newbyteorder(order)
    for dt in SUPPORTED_DTYPES
    for order in ("=", "<", ">")
    if dt.itemsize > 1
] + [np.dtype(np.uint8)]


def array_strategy() -> st.SearchStrategy[npt.NDArray[Any]]:
    return st.sampled_from(WIRE_DTYPES).flatmap(
        lambda dt: hnp.arrays(dtype=dt, shape=st.integers(0, 24))
    )


def message_strategy(max_arrays: int = 6) -> st.SearchStrategy[Message]:
    return st.builds(
        Message, header=header_strategy(), arrays=st.lists(array_strategy(), max_size=max_arrays)
    )


def aligned_copy(frame: bytes) -> tuple[memoryview, npt.NDArray[np.uint64]]:
    """The frame in a buffer known to start on an 8-byte boundary, plus that backing buffer."""
    backing = np.zeros((len(frame) + 7) // 8, dtype=np.uint64)
    view = backing.view(np.uint8)[: len(frame)]
    view[:] = np.frombuffer(frame, dtype=np.uint8)
    assert backing.ctypes.data % 8 == 0
    return view.data, backing


def assert_same(got: Message, want: Message) -> None:
    """Header equal; each array the little-endian version of the original, bit for bit."""
    assert got.header == want.header
    assert len(got.arrays) == len(want.arrays)
    for g, w in zip(got.arrays, want.arrays, strict=True):
        le = w.dtype.newbyteorder("<")
        assert g.dtype == le
        assert g.ndim == 1
        assert g.tobytes() == w.astype(le).tobytes()
    assert got == want


def sample_message() -> Message:
    header = Header(Kind.ACT, RUN, layer=3, src=1, dst=2)
    arrays: list[npt.NDArray[Any]] = [
        np.arange(5, dtype=np.uint32),
        np.array([1.5, -2.0, np.nan], dtype=np.float32),
        np.zeros(0, dtype=np.int64),
        np.arange(3, dtype=np.uint8),
    ]
    return Message(header, arrays)


def patch(frame: bytes, offset: int, fmt: str, value: Any) -> bytes:
    buf = bytearray(frame)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


# --- round trips -------------------------------------------------------------------------------


@FAST
@given(message_strategy())
def test_roundtrip_is_exact_zero_copy_and_aligned(msg: Message) -> None:
    frame = encode(msg)
    assert len(frame) % 8 == 0
    assert peek_header(frame) == msg.header
    assert frame_length(frame[:HEADER_SIZE]) == len(frame)
    assert_same(decode(frame), msg)

    view, backing = aligned_copy(frame)
    got = decode(view)
    assert_same(got, msg)
    for arr in got.arrays:
        assert arr.ctypes.data % 8 == 0
        assert arr.flags.aligned
        assert not arr.flags.writeable
        if arr.size:
            assert np.shares_memory(arr, backing)  # zero-copy: a view into the frame


def test_misaligned_buffer_still_gives_aligned_arrays() -> None:
    msg = sample_message()
    frame = encode(msg)
    backing = np.zeros(len(frame) + 8, dtype=np.uint8)
    start = 1 if backing.ctypes.data % 8 == 0 else 0
    while (backing.ctypes.data + start) % 8 == 0:
        start += 1
    backing[start : start + len(frame)] = np.frombuffer(frame, dtype=np.uint8)
    got = decode(backing[start : start + len(frame)].data)
    assert_same(got, msg)
    assert all(a.ctypes.data % 8 == 0 for a in got.arrays)


def test_empty_and_zero_arrays() -> None:
    header = Header(Kind.RESULT, RUN, layer=0, src=0, dst=-1, flags=FLAG_ERROR)
    cases: list[list[npt.NDArray[Any]]] = [
        [],
        [np.zeros(0, np.float64)],
        [np.zeros(7, np.uint16), np.zeros(0, np.uint8)],
        [np.zeros(0, np.uint8), np.zeros(5, np.int32), np.zeros(1, np.float64)],
    ]
    for arrays in cases:
        msg = Message(header, arrays)
        assert_same(decode(encode(msg)), msg)


def test_big_endian_and_strided_inputs_are_converted() -> None:
    big = np.arange(6, dtype=">i8")
    strided = np.arange(10, dtype=np.float64)[::3]
    got = decode(encode(Message(Header(Kind.INPUT, RUN, 0, -1, 4), [big, strided])))
    assert got.arrays[0].dtype == np.dtype("<i8")
    assert got.arrays[0].tolist() == list(range(6))
    assert got.arrays[1].tolist() == [0.0, 3.0, 6.0, 9.0]


def test_decoded_arrays_are_read_only() -> None:
    got = decode(encode(sample_message()))
    with pytest.raises(ValueError, match="read-only"):
        got.arrays[0][0] = 1


def test_message_equality_is_bitwise() -> None:
    a = sample_message()
    b = sample_message()
    assert a == b
    b.arrays[0] = b.arrays[0].astype(np.int32)
    assert a != b
    c = sample_message()
    c.arrays[1] = np.array([1.5, -2.0, 0.0], dtype=np.float32)
    assert a != c


# --- chunking ------------------------------------------------------------------------------------


@FAST
@given(msg=message_strategy(), data=st.data())
def test_split_and_reassemble_any_order_with_duplicates(msg: Message, data: st.DataObject) -> None:
    frame = encode(msg)
    limit = data.draw(
        st.one_of(
            st.integers(HEADER_SIZE + 1, HEADER_SIZE + 64),
            st.integers(HEADER_SIZE + 1, len(frame) + 16),
        ),
        label="limit",
    )
    chunks = split(frame, limit)
    assert all(len(c) <= limit for c in chunks)
    if len(frame) <= limit:
        assert chunks == [frame]
    else:
        assert len(chunks) > 1
        assert all(peek_header(c).nchunks == len(chunks) for c in chunks)
        assert b"".join(c[HEADER_SIZE:] for c in chunks) == frame[HEADER_SIZE:]

    order = data.draw(st.permutations(range(len(chunks))), label="order")
    sequence = list(order)
    for dup in data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=8), label="dups"):
        sequence.insert(data.draw(st.integers(0, len(sequence)), label="at"), dup)

    reassembler = Reassembler()
    seen: set[int] = set()
    results = []
    for index in sequence:
        seen.add(index)
        out = reassembler.add(chunks[index])
        if out is not None:
            results.append(out)
            if len(chunks) > 1:
                # Only the first arrival of the last missing chunk completes the message.
                assert len(seen) == len(chunks) and len(results) == 1
    if len(chunks) > 1:
        assert len(results) == 1
    else:
        assert len(results) == len(sequence)  # unchunked frames are decoded every time
    assert_same(results[0], msg)
    assert results[0].header.chunk == 0 and results[0].header.nchunks == 1
    assert reassembler.pending == 0


def test_reassembler_keeps_interleaved_messages_apart() -> None:
    msgs = [
        Message(Header(Kind.ACT, RUN, 5, src, 9), [np.arange(40 + src, dtype=np.int32)])
        for src in range(3)
    ]
    all_chunks = [split(encode(m), HEADER_SIZE + 24) for m in msgs]
    reassembler = Reassembler()
    got: list[Message] = []
    for i in range(max(len(c) for c in all_chunks)):
        for chunks in all_chunks:
            if i < len(chunks):
                out = reassembler.add(chunks[i])
                if out is not None:
                    got.append(out)
    assert sorted(got, key=lambda m: m.header.src) == msgs


def test_split_rejects_too_small_limit() -> None:
    frame = encode(sample_message())
    for limit in (0, HEADER_SIZE - 1, HEADER_SIZE):
        with pytest.raises(WireError, match="limit"):
            split(frame, limit)
    assert len(split(frame, HEADER_SIZE + 1)) == len(frame) - HEADER_SIZE


def test_split_rejects_chunk_frames() -> None:
    chunk = split(encode(sample_message()), HEADER_SIZE + 16)[0]
    with pytest.raises(WireError, match="already chunk"):
        split(chunk, HEADER_SIZE + 8)


def test_reassembly_too_large_is_rejected_and_dropped() -> None:
    frame = encode(sample_message())
    chunks = split(frame, HEADER_SIZE + 16)
    reassembler = Reassembler(max_message_bytes=len(frame) - 1)
    with pytest.raises(WireError, match="max_message_bytes"):
        for c in chunks:
            reassembler.add(c)
    assert reassembler.pending == 0
    assert Reassembler(max_message_bytes=len(frame)).add(chunks[0]) is None


def test_reassembly_rejects_disagreeing_nchunks() -> None:
    frame = encode(sample_message())
    a = split(frame, HEADER_SIZE + 16)
    b = split(frame, HEADER_SIZE + 32)
    reassembler = Reassembler()
    assert reassembler.add(a[0]) is None
    with pytest.raises(WireError, match="chunks"):
        reassembler.add(b[1])


def test_late_redelivery_after_completion_is_ignored() -> None:
    msg = sample_message()
    chunks = split(encode(msg), HEADER_SIZE + 16)
    reassembler = Reassembler()
    results = [reassembler.add(c) for c in chunks + chunks]
    assert [r for r in results if r is not None] == [msg]
    assert reassembler.pending == 0


def test_decode_refuses_chunk_frames() -> None:
    chunk = split(encode(sample_message()), HEADER_SIZE + 16)[0]
    with pytest.raises(WireError, match="Reassembler"):
        decode(chunk)


# --- hostile input: only WireError, ever -------------------------------------------------------


def decode_or_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode(data)
    with contextlib.suppress(WireError):
        Reassembler(max_message_bytes=1 << 16).add(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_wire_error(data: bytes) -> None:
    decode_or_wire_error(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_body_behind_valid_magic(data: bytes) -> None:
    # Get past the magic/version checks so the body parser sees the garbage.
    head = bytearray(encode(sample_message())[:HEADER_SIZE])
    struct.pack_into("<Q", head, OFF_BODY_LEN, len(data))
    decode_or_wire_error(bytes(head) + data)


@FAST
@given(msg=message_strategy(max_arrays=3), data=st.data())
def test_any_single_byte_change_or_truncation(msg: Message, data: st.DataObject) -> None:
    frame = encode(msg)
    index = data.draw(st.integers(0, len(frame) - 1), label="index")
    value = data.draw(st.integers(0, 255), label="value")
    mutated = bytearray(frame)
    mutated[index] = value
    decode_or_wire_error(bytes(mutated))
    cut = data.draw(st.integers(0, len(frame) - 1), label="cut")
    with pytest.raises(WireError):
        decode(frame[:cut])
    chunks = split(frame, HEADER_SIZE + 8)
    victim = data.draw(st.integers(0, len(chunks) - 1), label="victim")
    broken = bytearray(chunks[victim])
    broken[data.draw(st.integers(0, len(broken) - 1), label="at")] = value
    reassembler = Reassembler()
    with contextlib.suppress(WireError):
        for i, c in enumerate(chunks):
            reassembler.add(bytes(broken) if i == victim else c)


def test_every_single_byte_change_of_a_small_frame() -> None:
    frame = encode(sample_message())
    for index in range(len(frame)):
        for value in (0, 1, 0x7F, 0x80, 0xFF, frame[index] ^ 0x01):
            mutated = bytearray(frame)
            mutated[index] = value
            decode_or_wire_error(bytes(mutated))
        with pytest.raises(WireError):
            decode(frame[:index])


def test_header_layout_matches_the_documented_one() -> None:
    header = Header(Kind.RESULT, RUN, layer=7, src=-1, dst=5, flags=FLAG_ERROR)
    frame = encode(Message(header, []))
    assert HEADER_SIZE == 52
    assert frame[:4] == b"FSD1"
    assert frame[OFF_VERSION] == 1 and frame[OFF_KIND] == Kind.RESULT
    assert frame[OFF_FLAGS] == FLAG_ERROR and frame[OFF_RESERVED] == 0
    assert frame[OFF_RUN : OFF_RUN + RUN_ID_BYTES] == RUN
    assert struct.unpack_from("<IiiIIQ", frame, OFF_LAYER) == (7, -1, 5, 0, 1, 4)
    assert frame[HEADER_SIZE:] == struct.pack("<I", 0)


# --- each validation error, explicitly ---------------------------------------------------------


def test_bad_magic() -> None:
    frame = encode(sample_message())
    with pytest.raises(WireError, match="magic"):
        decode(b"NOPE" + frame[4:])


def test_bad_version() -> None:
    with pytest.raises(WireError, match="version 2"):
        decode(patch(encode(sample_message()), OFF_VERSION, "<B", 2))


def test_unknown_kind() -> None:
    for kind in (0, 5, 255):
        with pytest.raises(WireError, match="kind"):
            decode(patch(encode(sample_message()), OFF_KIND, "<B", kind))


def test_reserved_byte_and_flag_bits() -> None:
    frame = encode(sample_message())
    with pytest.raises(WireError, match="reserved"):
        decode(patch(frame, OFF_RESERVED, "<B", 1))
    with pytest.raises(WireError, match="reserved bits"):
        decode(patch(frame, OFF_FLAGS, "<B", 4))
    assert decode(patch(frame, OFF_FLAGS, "<B", FLAG_ERROR)).header.flags == FLAG_ERROR


def test_unknown_dtype_code() -> None:
    for code in (0, 8, 255):
        with pytest.raises(WireError, match="dtype code"):
            decode(patch(encode(sample_message()), OFF_DESC0, "<B", code))


def test_nonzero_descriptor_padding() -> None:
    with pytest.raises(WireError, match="padding"):
        decode(patch(encode(sample_message()), OFF_DESC0 + 1, "<B", 1))


def test_nonzero_array_padding() -> None:
    msg = Message(Header(Kind.ACT, RUN, 0, 0, 1), [np.arange(3, dtype=np.uint8)])
    frame = encode(msg)
    with pytest.raises(WireError, match="padding"):
        decode(frame[:-1] + b"\x01")


def test_truncated() -> None:
    frame = encode(sample_message())
    with pytest.raises(WireError, match="truncated"):
        decode(frame[: HEADER_SIZE - 1])
    with pytest.raises(WireError, match="truncated"):
        decode(frame[:-8])
    with pytest.raises(WireError, match="truncated"):
        decode(b"")


def test_trailing_bytes() -> None:
    frame = encode(sample_message())
    with pytest.raises(WireError, match="trailing"):
        decode(frame + bytes(8))
    # Body length agrees with the frame, but the arrays end early.
    longer = patch(frame + bytes(8), OFF_BODY_LEN, "<Q", len(frame) + 8 - HEADER_SIZE)
    with pytest.raises(WireError, match="trailing"):
        decode(longer)


def test_array_overruns_frame() -> None:
    frame = encode(sample_message())
    with pytest.raises(WireError, match="needs"):
        decode(patch(frame, OFF_DESC0 + 8, "<Q", 2**63))


def test_narrays_bounded_by_frame() -> None:
    with pytest.raises(WireError, match="room"):
        decode(patch(encode(sample_message()), OFF_NARRAYS, "<I", 2**32 - 1))


def test_run_id_of_wrong_length() -> None:
    for run in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(WireError, match="run id"):
            Header(Kind.ACT, run, 0, 0, 0)
    with pytest.raises(WireError, match="run id"):
        Header(Kind.ACT, "0123456789abcdef", 0, 0, 0)  # type: ignore[arg-type]


def test_chunk_not_below_nchunks() -> None:
    with pytest.raises(WireError, match="chunk"):
        Header(Kind.ACT, RUN, 0, 0, 0, chunk=1, nchunks=1)
    with pytest.raises(WireError, match="nchunks"):
        Header(Kind.ACT, RUN, 0, 0, 0, chunk=0, nchunks=0)
    frame = encode(sample_message())
    with pytest.raises(WireError, match="chunk"):
        decode(patch(patch(frame, OFF_NCHUNKS, "<I", 2), OFF_CHUNK, "<I", 2))


def test_header_field_ranges() -> None:
    bad: list[dict[str, Any]] = [
        {"layer": -1},
        {"layer": 2**32},
        {"src": 2**31},
        {"dst": -(2**31) - 1},
        {"flags": 256},
        {"kind": 9},
        {"layer": 1.0},
    ]
    for fields in bad:
        args: dict[str, Any] = {"kind": Kind.ACT, "run": RUN, "layer": 0, "src": 0, "dst": 0}
        args.update(fields)
        with pytest.raises(WireError):
            Header(**args)
    assert Header(2, RUN, 0, 0, 0).kind is Kind.ACT  # type: ignore[arg-type]


def test_encode_rejects_bad_arrays_and_chunk_headers() -> None:
    header = Header(Kind.ACT, RUN, 0, 0, 0)
    for arr in (
        np.zeros((2, 2), np.float32),
        np.zeros((), np.float32),
        np.zeros(3, np.uint64),
        np.zeros(3, np.bool_),
        np.zeros(3, np.complex64),
        np.zeros(3, object),
        np.zeros(3, [("a", np.int32)]),
    ):
        with pytest.raises(WireError):
            encode(Message(header, [arr]))
    with pytest.raises(WireError, match="not a numpy array"):
        encode(Message(header, [[1, 2, 3]]))  # type: ignore[list-item]
    with pytest.raises(WireError, match="split"):
        encode(Message(Header(Kind.ACT, RUN, 0, 0, 0, chunk=0, nchunks=2), []))


def test_non_buffer_and_non_contiguous_frames() -> None:
    with pytest.raises(WireError, match="bytes-like"):
        decode("not bytes")  # type: ignore[arg-type]
    frame = encode(sample_message())
    with pytest.raises(WireError, match="contiguous"):
        decode(memoryview(frame * 2)[::2])
    assert_same(decode(bytearray(frame)), sample_message())


def test_large_arrays_encode_quickly() -> None:
    big = np.arange(2_000_000, dtype=np.float32)
    msg = Message(Header(Kind.ACT, RUN, 1, 0, 1), [big, big.astype(">f4")])
    frame = encode(msg)
    got = decode(frame)
    assert np.array_equal(got.arrays[0], big) and np.array_equal(got.arrays[1], big)


# --- compression -------------------------------------------------------------------------------


def _saturated(n: int) -> Message:
    """Like real activations late in the net: many values at the cap."""
    arrays: list[npt.NDArray[Any]] = [
        (np.arange(n) % 512).astype(np.uint16),
        np.full(n, 32.0, np.float32),
    ]
    return Message(Header(Kind.ACT, RUN, 3, 0, 1), arrays)


@FAST
@given(message_strategy())
def test_compressed_roundtrip_is_exact(msg: Message) -> None:
    got = decode(encode(msg, compress=True))
    assert_same(got, msg)
    assert not got.header.flags & FLAG_ZSTD


def test_compression_is_used_when_it_pays() -> None:
    msg = _saturated(100_000)
    plain, packed = encode(msg), encode(msg, compress=True)
    assert peek_header(packed).flags & FLAG_ZSTD
    assert len(packed) * 50 < len(plain)
    assert decode(packed) == msg
    pieces = split(packed, 256)
    reassembler = Reassembler()
    whole = [m for c in reversed(pieces) if (m := reassembler.add(c)) is not None]
    assert whole == [msg]


def test_compression_is_skipped_when_it_does_not_pay() -> None:
    rng = np.random.default_rng(1)
    noise = Message(Header(Kind.ACT, RUN, 1, 0, 1), [rng.random(10_000)])
    small = _saturated(COMPRESS_MIN // 16)
    for msg in (noise, small):
        frame = encode(msg, compress=True)
        assert not peek_header(frame).flags & FLAG_ZSTD
        assert frame == encode(msg)


def test_every_single_byte_change_of_a_compressed_frame() -> None:
    frame = encode(_saturated(2000), compress=True)
    assert peek_header(frame).flags & FLAG_ZSTD
    for index in range(len(frame)):
        for value in (0, 0xFF, frame[index] ^ 0x01):
            mutated = bytearray(frame)
            mutated[index] = value
            decode_or_wire_error(bytes(mutated))


def test_compressed_body_without_size_or_too_large_is_refused() -> None:
    import zstandard

    frame = encode(_saturated(2000), compress=True)
    raw = encode(_saturated(2000))[HEADER_SIZE:]
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(raw)
    head = bytearray(frame[:HEADER_SIZE])
    struct.pack_into("<Q", head, OFF_BODY_LEN, len(unsized))
    with pytest.raises(WireError, match="announces"):
        decode(bytes(head) + unsized)
    bomb = zstandard.ZstdCompressor().compress(bytes((1 << 30) + 8))
    struct.pack_into("<Q", head, OFF_BODY_LEN, len(bomb))
    with pytest.raises(WireError, match="announces"):
        decode(bytes(head) + bomb)
