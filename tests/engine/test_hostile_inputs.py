"""Hostile arrays never crash a worker: received frames and shard files are checked before kernels.

The compiled kernels do no bounds checks, so a bad index is a segfault, not an exception. Every
test here therefore runs its body in a forked child and asserts the child exited 0: a segfault
(exit -11) or an unexpected exception (exit 1) fails the test, and the child's address space is
capped so that a huge allocation fails too instead of swapping the machine.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import multiprocessing
import resource
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsd import kernels, wire, worker
from fsd.channels.base import ChannelConfig
from fsd.errors import InputError, WireError
from fsd.model.generate import radix_net
from fsd.partition import make_plan
from fsd.shard import LayerShard, Shard, build_shards, shard_from_bytes, shard_to_bytes
from fsd.task import WorkerTask

RUN = b"r" * 16
IMAGES = 12
DTYPE = np.dtype(np.float32)
WIRE = list(wire.SUPPORTED_DTYPES)
# dtypes an npz can hold that the wire cannot: the shard loader must refuse them too
STORED = [*WIRE, np.dtype(bool), np.dtype(np.int16), np.dtype(np.uint64), np.dtype(np.float16)]
HOSTILE_INTS = [-1, -(2**31), 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), IMAGES]
HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e30, 3.5e38, 1e300, 64.0]
FUZZ = settings(  # derandomized: the same examples every run, so the suite is not flaky
    max_examples=150,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- running a body where a crash cannot take the test run down ----------------------------------


def _capped(body: Callable[[], None]) -> None:
    """Child side: cap the address space (1 GiB above what is mapped now), then run ``body``."""
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) for line in status if line.startswith("VmSize"))
    cap = size * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    body()


def in_child(body: Callable[[], None], timeout: float = 120.0) -> None:
    """Run ``body`` in a forked child; fail unless it exits 0 (-11 is a segfault)."""
    child = multiprocessing.get_context("fork").Process(target=_capped, args=(body,))
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail(f"the child hung for {timeout} s")
    assert child.exitcode == 0, f"child exited {child.exitcode} (-11: segfault, 1: exception)"


# -- a small real model, and what a worker in it receives ---------------------------------------


@functools.cache
def _shards() -> list[Shard]:
    network = radix_net(256, 3, seed=5)
    kernels.warm_up(DTYPE)
    return build_shards(network, make_plan(network, 3, "random", seed=1), DTYPE)


def _task(me: int, shard: Shard | None = None) -> WorkerTask:
    shard = shard or _shards()[me]
    return WorkerTask(RUN, me, 3, IMAGES, shard, -0.3, 32.0, "float32", ChannelConfig("local"))


def _via_wire(kind: wire.Kind, layer: int, src: int, dst: int, arrays: list[Any]) -> wire.Message:
    """The message exactly as a receiver gets it: read-only views of wire dtypes."""
    return wire.decode(wire.encode(wire.Message(wire.Header(kind, RUN, layer, src, dst), arrays)))


def _cast(a: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """``a`` as ``dtype`` wrapping like a C cast (what a careless or hostile sender sends)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(a).astype(dtype)


def _valid_input(rng: np.random.Generator, width: int) -> list[np.ndarray]:
    n = int(rng.integers(0, 60))
    return [
        rng.integers(0, IMAGES, n).astype(np.uint32),
        rng.integers(0, width, n).astype(np.uint32),
        rng.normal(size=n).astype(DTYPE),
    ]


def _valid_act(rng: np.random.Generator, wanted: int, layer: int) -> list[np.ndarray]:
    """What gather_columns sends: busy rows ascending, counts, positions, values (capped)."""
    busy = np.sort(rng.choice(IMAGES, int(rng.integers(0, IMAGES + 1)), replace=False))
    counts = rng.integers(1, wanted + 1, len(busy))
    pos = [rng.choice(wanted, int(c), replace=False) for c in counts]
    total = int(counts.sum())
    low = 0.01 if layer > 1 else -5.0  # layer 1 carries input values, later ones a layer's output
    return [
        busy.astype(np.uint32),
        counts.astype(np.uint32),
        np.concatenate([np.empty(0, np.int64), *pos]).astype(np.uint16),
        rng.uniform(low, 32.0, total).astype(DTYPE),
    ]


def _receiver() -> tuple[int, LayerShard]:
    """A worker and a layer of its shard that receives from at least two sources."""
    for me, shard in enumerate(_shards()):
        for layer in shard.layers:
            if len(layer.sources) >= 2:
                return me, layer
    raise AssertionError("the test model has no layer with two sources")


def _mutate(
    data: st.DataObject, arrays: list[np.ndarray], dtypes: list[Any], arity: bool = True
) -> list[np.ndarray]:
    """A few random hostile edits: dtype, one element, length, order, a whole new array, and
    (with ``arity``) the number of arrays."""
    arrays = list(arrays)
    for _ in range(data.draw(st.integers(1, 3))):
        if arity and data.draw(st.integers(0, 9)) == 0:
            if bool(arrays) and data.draw(st.booleans()):
                arrays.pop()
            else:
                arrays.append(np.zeros(3, np.uint32))
            continue
        if not arrays:
            continue
        i = data.draw(st.integers(0, len(arrays) - 1))
        a = arrays[i]
        how = data.draw(st.sampled_from(["dtype", "int", "float", "drop", "add", "new", "flip"]))
        if how == "dtype":
            a = _cast(a, data.draw(st.sampled_from(dtypes)))
        elif how in ("int", "float") and len(a):
            j = data.draw(st.integers(0, len(a) - 1))
            pool = HOSTILE_INTS if how == "int" else HOSTILE_FLOATS
            wide = _cast(a, np.dtype(np.int64 if how == "int" else np.float64))
            wide[j] = data.draw(st.sampled_from(pool))
            a = _cast(wide, data.draw(st.sampled_from([a.dtype, *dtypes])))
        elif how == "drop":
            a = a[: len(a) - data.draw(st.integers(1, 3))]
        elif how == "add":
            a = np.concatenate([a, _cast(data.draw(st.sampled_from(HOSTILE_INTS)), a.dtype)[None]])
        elif how == "new":
            values = data.draw(st.lists(st.integers(-(2**40), 2**40), max_size=30))
            a = _cast(np.array(values, np.int64), data.draw(st.sampled_from(dtypes)))
        else:
            a = a[::-1].copy()
        arrays[i] = a
    return arrays


def _check_csr(csr: kernels.Csr, nrows: int, ncols: int) -> None:
    indptr, indices, values = csr
    assert len(indptr) == nrows + 1 and indptr[0] == 0 and (np.diff(indptr) >= 0).all()
    assert indptr[-1] == len(indices) == len(values)
    assert (indices >= 0).all() and (indices < ncols).all()
    assert np.isfinite(values).all()


# -- fuzz: what a worker receives --------------------------------------------------------------


@FUZZ
@given(st.data(), st.integers(0, 2**32 - 1))
def _fuzz_input_matrix(data: st.DataObject, seed: int) -> None:
    task = _task(0)
    assert task.shard is not None
    width = len(task.shard.inputs)
    arrays = _valid_input(np.random.default_rng(seed), width)
    hostile = data.draw(st.booleans())
    if hostile:
        arrays = _mutate(data, arrays, WIRE)
    msg = _via_wire(wire.Kind.INPUT, 0, -1, 0, arrays)
    try:
        csr = worker._input_matrix(task, msg)
    except (WireError, InputError):
        assert hostile, "a valid INPUT was refused"
        return
    _check_csr(csr, IMAGES, width)


def test_fuzz_input_matrix_never_crashes() -> None:
    in_child(_fuzz_input_matrix)


@FUZZ
@given(st.data(), st.integers(0, 2**32 - 1), st.sampled_from([1, 2]))
def _fuzz_assemble(data: st.DataObject, seed: int, layer_no: int) -> None:
    me, layer = _receiver()
    rng = np.random.default_rng(seed)
    ends = [*layer.offsets[1:], layer.n_remote]
    got = {}
    hostile = data.draw(st.sets(st.sampled_from(layer.sources), max_size=2))
    for src, off, end in zip(layer.sources, layer.offsets, ends, strict=True):
        arrays = _valid_act(rng, end - off, layer_no)
        if src in hostile:
            arrays = _mutate(data, arrays, WIRE)
        got[src] = _via_wire(wire.Kind.ACT, layer_no, src, me, arrays)
    try:
        csr = worker._assemble(_task(me), got, layer)
    except (WireError, InputError):
        assert hostile, "valid activations were refused"
        return
    _check_csr(csr, IMAGES, layer.n_remote)


def test_fuzz_assemble_never_crashes() -> None:
    in_child(_fuzz_assemble)


# -- fuzz: shard files from a model store -------------------------------------------------------


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _drive(shard: Shard) -> None:
    """Every kernel call the worker loop makes with this shard, on random activations."""
    rng = np.random.default_rng(0)

    def acts(ncols: int) -> kernels.Csr:
        m = sp.random(IMAGES, ncols, density=0.5, random_state=rng, dtype=np.float32) * 8
        c = sp.csr_matrix(m)
        return c.indptr.astype(np.int64), c.indices.astype(np.int32), c.data

    y = acts(len(shard.inputs))
    empty = kernels.empty_csr(IMAGES, DTYPE)
    for layer in shard.layers:
        for _, selmap, wanted in layer.sends:
            worker._activations(y, selmap, wanted)
        if layer.sources:
            x = acts(layer.n_remote)
            zs = [kernels.partial_product(*y, *part.w_local, part.width) for part in layer.parts]
            outs = [
                kernels.finish_layer(*z, *x, *part.w_remote, part.width, -0.3, 32.0)
                for z, part in zip(zs, layer.parts, strict=True)
            ]
        else:
            outs = [
                kernels.finish_layer(*empty, *y, *part.w_local, part.width, -0.3, 32.0)
                for part in layer.parts
            ]
        y = outs[0] if len(outs) == 1 else kernels.hstack(*outs[0], *outs[1], layer.parts[0].width)
        _check_csr(y, IMAGES, layer.n_out)


JSON_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 0, 1, 2, 3, 2**31, 2**63, 1e300, math.nan, True, None, "1", [], {}]),
    st.lists(st.integers(-3, 300), max_size=4),
    st.lists(st.lists(st.integers(-3, 300), max_size=3), max_size=3),
)


def _mutate_meta(data: st.DataObject, raw: np.ndarray) -> np.ndarray:
    meta = json.loads(raw.tobytes())
    k = data.draw(st.integers(-1, len(meta["layers"]) - 1))
    if k < 0:
        target, fields = meta, ["worker", "layers", "extra"]
    else:
        target = meta["layers"][k]
        fields = ["n_out", "n_boundary", "widths", "sends", "sources", "offsets"]
    field = data.draw(st.sampled_from(fields))
    old = target.get(field)
    if isinstance(old, list) and old and data.draw(st.booleans()):  # one element of a list
        i = data.draw(st.integers(0, len(old) - 1))
        if isinstance(old[i], list) and data.draw(st.booleans()):
            old[i][data.draw(st.integers(0, 1))] = data.draw(JSON_VALUES)
        else:
            old[i] = data.draw(JSON_VALUES)
    elif data.draw(st.integers(0, 4)) == 0:
        target.pop(field, None)
    else:
        target[field] = data.draw(JSON_VALUES)
    return np.frombuffer(json.dumps(meta).encode(), np.uint8)


@FUZZ
@given(st.data(), st.integers(0, 2), st.sampled_from(["none", "array", "meta", "members", "bytes"]))
def _fuzz_shard(data: st.DataObject, me: int, how: str) -> None:
    good = shard_to_bytes(_shards()[me])
    with np.load(io.BytesIO(good)) as z:
        arrays = {name: z[name] for name in z.files}
    if how == "array":
        name = data.draw(st.sampled_from(sorted(set(arrays) - {"meta"})))
        arrays[name] = _mutate(data, [arrays[name]], STORED, arity=False)[0]
    elif how == "meta":
        arrays["meta"] = _mutate_meta(data, arrays["meta"])
    elif how == "members":
        name = data.draw(st.sampled_from(sorted(arrays)))
        if data.draw(st.booleans()):
            del arrays[name]
        else:
            arrays[name + "x"] = arrays[name]
    if how == "bytes":
        blob = bytearray(good)
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
        blob_bytes = bytes(blob)
    else:
        blob_bytes = _npz(arrays)
    try:
        shard = shard_from_bytes(blob_bytes)
    except InputError:
        assert how != "none", "a valid shard was refused"
        return
    _drive(shard)


def test_fuzz_shard_loader_never_crashes() -> None:
    in_child(_fuzz_shard)


# -- the measured crashes, and other targeted cases ---------------------------------------------


def _refused(
    call: Callable[[], object],
    error: type[Exception],
    match: str,
    valid: Callable[[], object] | None = None,
) -> Callable[[], None]:
    """A child body: ``valid`` (the same input unedited) goes through, ``call`` raises."""

    def body() -> None:
        if valid is not None:
            valid()
        with pytest.raises(error, match=match):
            call()

    return body


def test_negative_int64_row_is_refused_not_a_segfault() -> None:
    """Measured on main: passes the old max-only check, coo_to_csr writes out of bounds."""
    rows = np.full(1000, -(10**9), np.int64)
    msg = _via_wire(
        wire.Kind.INPUT, 0, -1, 0, [rows, np.zeros(1000, np.uint32), np.ones(1000, DTYPE)]
    )
    in_child(_refused(lambda: worker._input_matrix(_task(0), msg), WireError, "negative"))


@pytest.mark.parametrize(
    ("which", "bad", "match"),
    [
        (0, np.arange(3, dtype=np.float64), "integer"),  # float row ids
        (1, np.array([0, 1, -7], np.int32), "negative"),
        (2, np.array([1.0, math.nan, 2.0], np.float32), "finite"),
        (2, np.array([1.0, 2.0, 3.0], np.float64), "float32"),  # no silent narrowing cast
    ],
)
def test_bad_input_arrays_are_refused(which: int, bad: np.ndarray, match: str) -> None:
    arrays = [np.zeros(3, np.uint32), np.zeros(3, np.uint32), np.ones(3, DTYPE)]
    good = _via_wire(wire.Kind.INPUT, 0, -1, 0, arrays)
    arrays[which] = bad
    msg = _via_wire(wire.Kind.INPUT, 0, -1, 0, arrays)
    in_child(_refused(_input_call(msg), WireError, match, _input_call(good)))


def _input_call(msg: wire.Message) -> Callable[[], object]:
    return lambda: worker._input_matrix(_task(0), msg)


def _act_case(edit: Callable[[list[np.ndarray]], None]) -> Callable[[], object]:
    """A layer-2 ACT frame from every source; the first source's is edited."""
    me, layer = _receiver()
    ends = [*layer.offsets[1:], layer.n_remote]
    got = {}
    for i, (src, off, end) in enumerate(zip(layer.sources, layer.offsets, ends, strict=True)):
        arrays = _valid_act(np.random.default_rng(i), end - off, 2)
        if i == 0:  # four rows, one activation each at position 0 (in any source's block)
            arrays = [
                np.array([0, 2, 5, 7], np.uint32),
                np.ones(4, np.uint32),
                np.zeros(4, np.uint16),
                np.array([1, 2, 3, 4], DTYPE),
            ]
            edit(arrays)
        got[src] = _via_wire(wire.Kind.ACT, 2, src, me, arrays)
    return lambda: worker._assemble(_task(me), got, layer)


def _counts_wrap(arrays: list[np.ndarray]) -> None:
    """Counts whose int64 sum wraps around to exactly the number of positions (4)."""
    arrays[0] = np.array([0, 1, 2, 3], np.uint32)
    arrays[1] = np.array([2**62, 2**62, 2**62, 2**62 + 4], np.int64)


def _counts_negative(arrays: list[np.ndarray]) -> None:
    arrays[0] = np.array([0, 1], np.uint32)
    arrays[1] = np.array([-1, 5], np.int64)


def _rows_negative(arrays: list[np.ndarray]) -> None:
    arrays[0] = np.array([-(10**9), 0, 1, 2], np.int64)


def _rows_unordered(arrays: list[np.ndarray]) -> None:
    arrays[0] = np.array([3, 3], np.uint32)
    arrays[1] = np.array([2, 2], np.uint32)


def _position_negative(arrays: list[np.ndarray]) -> None:
    arrays[2] = np.array([0, -1, 0, 0], np.int32)


def _value_above_cap(arrays: list[np.ndarray]) -> None:
    arrays[3] = np.full(4, 1e6, DTYPE)


def _value_nan(arrays: list[np.ndarray]) -> None:
    arrays[3] = np.full(4, math.nan, DTYPE)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_counts_wrap, "counts"),
        (_counts_negative, "counts"),
        (_rows_negative, "negative"),
        (_rows_unordered, "ascending"),
        (_position_negative, "negative"),
        (_value_above_cap, r"\(0, 32"),
        (_value_nan, r"\(0, 32"),
    ],
)
def test_bad_activations_are_refused(edit: Callable[[list[np.ndarray]], None], match: str) -> None:
    in_child(_refused(_act_case(edit), WireError, match, _act_case(lambda arrays: None)))


# -- shards: the cases the old loader let through --------------------------------------------


def _shard_case(
    edit: Callable[[dict[str, np.ndarray], dict[str, Any]], None],
) -> tuple[Callable[[], object], Callable[[], object]]:
    """Loading worker 0's shard unedited, and edited (arrays and decoded meta, in place)."""
    good = shard_to_bytes(_shards()[0])
    with np.load(io.BytesIO(good)) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    edit(arrays, meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    bad = _npz(arrays)
    return (lambda: shard_from_bytes(bad)), (lambda: _drive(shard_from_bytes(good)))


def _first(arrays: dict[str, np.ndarray], suffix: str) -> str:
    return sorted(k for k in arrays if k.endswith(suffix) and k[0] == "1")[0]


def _selmap_out_of_range(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "send0")
    arrays[name] = arrays[name].copy()
    arrays[name][np.argmax(arrays[name])] = 70000  # also past the u16 positions it travels in


def _selmap_short(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "send0")
    arrays[name] = arrays[name][: len(arrays[name]) // 2]


def _weight_column_out_of_range(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "local1")
    arrays[name] = arrays[name] + 10**6


def _indptr_not_monotone(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "remote0")
    arrays[name] = arrays[name][::-1].copy()


def _transposed_wrong_shape(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "local3")
    arrays[name] = np.concatenate([arrays[name], arrays[name][-1:]])


def _weights_nan(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "remote5")
    arrays[name] = np.full_like(arrays[name], math.nan)


def _weights_other_dtype(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    name = _first(arrays, "local2")
    arrays[name] = arrays[name].astype(np.float64)


def _offsets_past_block(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    layer = next(m for m in meta["layers"] if len(m["sources"]) >= 2)
    layer["offsets"][1] += 10**6


def _width_as_float(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    meta["layers"][1]["n_out"] = float(meta["layers"][1]["n_out"])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_selmap_out_of_range, "selmap"),
        (_selmap_short, "selmap"),
        (_weight_column_out_of_range, "out of range"),
        (_indptr_not_monotone, "indptr"),
        (_transposed_wrong_shape, "indptr"),
        (_weights_nan, "finite"),
        (_weights_other_dtype, "values are float64"),
        (_offsets_past_block, "offsets"),
        (_width_as_float, "integer"),
    ],
)
def test_bad_shards_are_refused(
    edit: Callable[[dict[str, np.ndarray], dict[str, Any]], None], match: str
) -> None:
    bad, good = _shard_case(edit)
    in_child(_refused(bad, InputError, match, good))


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, raw in members.items():
            zf.writestr(name + ".npy", raw)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _shard_members() -> dict[str, bytes]:
    with np.load(io.BytesIO(shard_to_bytes(_shards()[0]))) as z:
        return {name: _npy(z[name]) for name in z.files}


def test_npy_header_claiming_more_than_it_holds_is_refused() -> None:
    """np.load allocates what the header claims (here 8 TiB) before reading any data."""
    members = _shard_members()
    head = io.BytesIO()
    header = {"descr": "<i8", "fortran_order": False, "shape": (2**40,)}
    np.lib.format.write_array_header_1_0(head, header)
    members["inputs"] = head.getvalue() + bytes(64)
    bad = _zip(members)
    in_child(_refused(lambda: shard_from_bytes(bad), InputError, "announces"))


def test_compressed_members_are_refused() -> None:
    """A 32 MiB member deflates to a few KiB: compressed members could inflate without bound."""
    members = _shard_members()
    members["inputs"] = _npy(np.zeros(1 << 22, np.int64))
    bad = _zip(members, zipfile.ZIP_DEFLATED)
    assert len(bad) < 1 << 20
    in_child(_refused(lambda: shard_from_bytes(bad), InputError, "compressed"))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"worker": 1}, "shard of worker 0"),
        ({"workers": 2}, "outside 0..1"),  # the shard names worker 2 as a peer
        ({"dtype": "float64"}, "not float64"),
        ({"dtype": "object"}, "not float32 or float64"),
        ({"images": 2**33}, "images"),
    ],
)
def test_worker_refuses_a_shard_or_task_that_does_not_fit(edit: dict[str, Any], match: str) -> None:
    """A store may serve another worker's shard, or one cut for another run: refused up front."""
    assert any(2 in layer.sources for layer in _shards()[0].layers)
    task = dataclasses.replace(_task(0), **edit)
    in_child(
        _refused(
            lambda: worker._check_task(task),
            InputError,
            match,
            lambda: worker._check_task(_task(0)),
        )
    )
