"""Allocation bombs from files (issue 18, item 5): each is refused with exit 2 and one line,
having held no more than a few hundred MB, by the real CLI under a 6,000,000 KiB address-space
cap. Bombs stay small on disk: sparse files (``truncate``) and gzip of repeated members.

Before the fix: a 1 MB gzip of NUL bytes made ``fsd run`` hold 10.6 GB, a 200 MB newline-less
TSV 2.1 GB, a sparse 2.1 GB layer file 2.2 GB (exit 2, but after allocating) and a sparse
8.6 GB one died out of memory (exit 1).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from fsd.errors import ModelFormatError
from fsd.model import Network, load_network, write_images, write_network
from fsd.model.generate import generate
from fsd.model.layers import HEADER, layer_bytes, layer_file
from fsd.model.tsv import _cache_file

#: The issue's cap: ``ulimit -v 6000000`` (KiB).
ADDRESS_SPACE = 6_000_000 * 1024
#: Peak resident memory allowed to a refused bomb (the CLI alone holds about 150 MB).
MOST_RSS = 600 << 20
N = 256
LAYER = Path(f"neuron{N}") / f"n{N}-l2.tsv"
IMAGES = Path(f"sparse-images-{N}.tsv")
TRUTH = Path(f"neuron{N}-l3-categories.tsv")
BIG = 65536  # binary bombs: the header's edges are bounded by neurons squared
#: ``python -m fsd.cli`` with the cap set in the child (no preexec_fn in a threaded test process);
#: at exit it writes its own peak resident KiB (VmHWM: this process image's, whereas rusage
#: keeps the high-water mark of the forked test process it started as) to FSD_TEST_PEAK_FILE
CAPPED_CLI = (
    "import atexit, os, re, resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE})); "
    "atexit.register(lambda: open(os.environ['FSD_TEST_PEAK_FILE'], 'w').write("
    "re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))); "
    "runpy.run_module('fsd.cli', run_name='__main__', alter_sys=True)"
)


def _gzip_of(path: Path, unit: bytes, size: int) -> Path:
    """``path``.gz inflating to ``size`` bytes of ``unit`` repeated, a thousandth of that on
    disk: one member of 1 MB, written as many times as it takes (gzip reads them all)."""
    member = gzip.compress(unit * ((1 << 20) // len(unit)), mtime=0)
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(member * (size >> 20))
    path.unlink(missing_ok=True)
    return packed


def _sparse(path: Path, size: int, head: bytes = b"") -> Path:
    """``path`` of ``size`` bytes: ``head``, then a hole (zeros taking no disk)."""
    with path.open("wb") as fh:
        fh.write(head)
        fh.truncate(size)
    return path


def _binary_bomb(root: Path, size: int, indptr: bool = False) -> Path:
    """A binary model whose one layer file is ``size`` bytes, as its header says: a hole, or
    (``indptr``) real row pointers then a hole."""
    folder = root / f"neuron{BIG}"
    folder.mkdir(parents=True)
    (root / f"sparse-images-{BIG}.tsv").write_text("1\t1\t1\n2\t5\t1\n")
    edges = (size - 8 * (BIG + 1)) // 8
    header = {"format": "fsd-layers", "version": 1, "name": "bomb", "neurons": BIG, "layers": 1,
              "bias": -0.45, "ymax": 32.0, "dtype": "float32", "edges": [edges]}  # fmt: skip
    (folder / HEADER).write_text(json.dumps(header))
    head = np.linspace(0, edges, BIG + 1).astype("<i8").tobytes() if indptr else b""
    _sparse(folder / layer_file(1), layer_bytes(BIG, edges, np.dtype("<f4")), head)
    return folder / layer_file(1)


def _nul_gzip(rel: Path) -> Callable[[Path], Path]:
    return lambda root: _gzip_of(root / rel, b"\0", 1 << 30)


def _newline_less(root: Path) -> Path:
    return _sparse(root / LAYER, 200 << 20, b"1\t" * (1 << 19))


def _sparse_tsv(size: int) -> Callable[[Path], Path]:
    return lambda root: _sparse(root / LAYER, size)


def _sparse_binary(size: int, indptr: bool = False) -> Callable[[Path], Path]:
    return lambda root: _binary_bomb(root / "bin", size, indptr)


BOMBS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "gzip-of-nul-layer": (_nul_gzip(LAYER), ":1: line longer than 1024 bytes"),
    "gzip-of-nul-images": (_nul_gzip(IMAGES), ":1: line longer than 1024 bytes"),
    "tsv-200MB-no-newline": (_newline_less, ":1: line longer than 1024 bytes"),
    "sparse-tsv-2.1GB": (_sparse_tsv(2_100_000_000), ":1: line longer than 1024 bytes"),
    "sparse-tsv-8.6GB": (_sparse_tsv(8_600_000_000), ":1: line longer than 1024 bytes"),
    "sparse-binary-2.1GB": (_sparse_binary(2_100_000_000), ": indptr must run from 0 to"),
    "sparse-binary-8.6GB": (_sparse_binary(8_600_000_000), ": indptr must run from 0 to"),
    "binary-real-indptr-then-hole": (
        _sparse_binary(8_600_000_000, indptr=True),
        ": row 0: column ids unsorted or repeated",
    ),
    "gzip-of-one-line-repeated": (
        lambda root: _gzip_of(root / LAYER, b"1\t1\t0.5\n", 3 << 30),
        ":2: duplicate entry 1 1 (first on line 1)",
    ),
    "gzip-of-blank-lines": (
        lambda root: _gzip_of(root / LAYER, b"\n", 1 << 30),
        ": inflates to more than 100 times its",
    ),
    "truth-one-id-repeated": (
        lambda root: _gzip_of(root / TRUTH, b"1\n", 1 << 30),
        ":21: more than 20 image ids",
    ),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "data"
    network, images = generate(N, 3, 20, seed=0)
    write_network(root, network)
    write_images(root, images)
    return root


def _run_capped(argv: list[str], err: Path, env: dict[str, str]) -> tuple[int, int]:
    """Exit code and peak resident bytes of the CLI run in a child under the cap (what the
    child itself measured at exit, or its rusage when it could not); killed past two minutes,
    a hang."""
    peak_file = err.with_name(err.name + ".peak")
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", CAPPED_CLI, *argv],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            env={**env, "FSD_TEST_PEAK_FILE": str(peak_file)},
        )
    timer = threading.Timer(120, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak = peak_file.read_text() if peak_file.is_file() else ""
    return proc.returncode, int(peak or usage.ru_maxrss) * 1024


@pytest.mark.parametrize("name", list(BOMBS))
def test_file_bomb_exits_2_in_one_line_without_allocating(
    name: str, clean: Path, tmp_path: Path
) -> None:
    make, message = BOMBS[name]
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    bomb = make(root)
    data = bomb.parent.parent if bomb.parent.name.startswith("neuron") else bomb.parent
    assert bomb.stat().st_blocks * 512 < 32 << 20  # small on disk
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSD_", "AWS_"))}
    env["FSD_CACHE_DIR"] = str(tmp_path / "cache")
    code, rss = _run_capped(["run", "--data", str(data)], tmp_path / "stderr", env)
    err = (tmp_path / "stderr").read_text("utf-8", "backslashreplace")
    lines = err.strip().splitlines()
    assert code == 2, err
    assert rss < MOST_RSS, f"peak RSS {rss >> 20} MB"
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"fsd: error: {bomb}{message}"), err


# --- the binary cache of TSV nets: a file from outside too ---------------------------------


def _stored_zip(path: Path, members: list[tuple[str, bytes, int]]) -> None:
    """A zip of stored members (name, head, size): each ``head`` then zeros up to ``size``
    left as a hole, so a member can announce gigabytes and take none (CRCs are not checked
    before a member is read to its end, which a bomb never is)."""
    central = b""
    with path.open("wb") as fh:
        for name, head, size in members:
            offset, raw = fh.tell(), name.encode()
            crc = zlib.crc32(head)
            fh.write(struct.pack("<4s5H3L2H", b"PK\3\4", 20, 0, 0, 0, 0, crc, size, size,
                                 len(raw), 0) + raw)  # fmt: skip
            fh.write(head)
            fh.seek(size - len(head), os.SEEK_CUR)
            central += struct.pack("<4s6H3L5H2L", b"PK\1\2", 20, 20, 0, 0, 0, 0, crc, size, size,
                                   len(raw), 0, 0, 0, 0, 0, offset) + raw  # fmt: skip
        start = fh.tell()
        fh.write(central)
        fh.write(struct.pack("<4s4H2LH", b"PK\5\6", 0, 0, len(members), len(members),
                             len(central), start, 0))  # fmt: skip


def _npy_head(dtype: str, count: int) -> bytes:
    head = {"descr": dtype, "fortran_order": False, "shape": (count,)}
    text = repr(head).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def test_a_sparse_cache_is_rebuilt_without_allocating_what_it_announces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache whose row pointers announce 2**28 edges, then a hole where their columns would
    be: refused after one chunk (and the TSV read), not after allocating a gigabyte."""
    root = tmp_path / "data"
    (root / f"neuron{BIG}").mkdir(parents=True)
    path = root / f"neuron{BIG}" / f"n{BIG}-l1.tsv"
    path.write_text("1\t2\t0.5\n")
    cache = _cache_file([path], tmp_path / "cache")
    cache.parent.mkdir(parents=True)
    edges = 1 << 28
    indptr = _npy_head("<i8", BIG + 1) + np.linspace(0, edges, BIG + 1).astype("<i8").tobytes()
    _stored_zip(
        cache,
        [
            ("p0.npy", indptr, len(indptr)),
            ("i0.npy", _npy_head("<i4", edges), len(_npy_head("<i4", edges)) + 4 * edges),
            ("x0.npy", _npy_head("<f4", edges), len(_npy_head("<f4", edges)) + 4 * edges),
        ],
    )
    assert cache.stat().st_size > 2 * edges and cache.stat().st_blocks * 512 < 8 << 20
    tracemalloc.start()
    try:
        net = load_network(root, cache_dir=tmp_path / "cache")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, f"peak {peak >> 20} MB"
    assert net.edges == 1 and net.layers[0][0, 1] == 0.5
    assert "row 0: column ids unsorted or repeated" in caplog.text  # refused for its holes


# --- the bounds hold exactly, whatever the chunk a line or an entry falls in -----------------


def _random_net(neurons: int, density: float) -> Network:
    """A net of 3 random layers, weights exact in float32."""
    rng = np.random.default_rng(3)
    mats = []
    for _ in range(3):
        w = sp.csr_matrix(sp.random(neurons, neurons, density=density, rng=rng))
        w.data = (w.data + 0.5).astype(np.float32).astype(np.float64)
        mats.append(w)
    return Network(mats, -0.3)


def _padded(line: str, size: int) -> str:
    """``line`` (``row<TAB>col<TAB>value``) padded with leading zeros to ``size`` bytes with
    its newline: the same triple, however long."""
    return "0" * (size - len(line) - 1) + line + "\n"


@pytest.mark.parametrize("block", [7, 1000, 1 << 23])  # bytes: under a line, some lines, all
def test_lines_up_to_the_limit_are_read_in_any_block_and_longer_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """A line of MAX_LINE bytes (its newline included) is a line like any other, across block
    ends too; one byte more is refused on its line, gzipped or not."""
    from fsd.model import tsv

    monkeypatch.setattr(tsv, "BLOCK_BYTES", block)
    root = tmp_path / "data"
    network = _random_net(32, 0.3)
    write_network(root, network)
    path = root / "neuron32" / "n32-l2.tsv"
    lines = path.read_text().splitlines(keepends=True)
    lines[100] = _padded(lines[100].strip(), tsv.MAX_LINE)
    lines[200] = "\n" * 3000 + lines[200]  # blank lines are skipped, however many
    path.write_text("".join(lines))
    assert all(abs(a - b).max() == 0 for a, b in zip(load_network(root, cache=False).layers,
                                                       network.layers, strict=True))  # fmt: skip
    lines[150] = _padded(lines[150].strip(), tsv.MAX_LINE + 1)
    path.write_text("".join(lines))
    with pytest.raises(ModelFormatError, match=rf"{path}:151: line longer than 1024 bytes"):
        load_network(root, cache=False)
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    with pytest.raises(ModelFormatError, match=rf"{packed}:151: line longer than 1024 bytes"):
        load_network(root, cache=False)


def test_binary_layers_and_cache_are_checked_across_chunk_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Read 5 entries at a time, a layer is the one written, a cache the one saved, and a
    column out of order right at a chunk end is still found, in its row."""
    from fsd.model import layers
    from fsd.model.layers import LayerFolder, LayerWriter

    monkeypatch.setattr(layers, "CHUNK", 5)
    network = _random_net(64, 0.5)
    assert network.layers[1].indptr[1] > 11  # row 0 spans chunks 1 to 3
    with LayerWriter(tmp_path / "bin", 64, network.bias) as writer:
        for w in network.layers:
            writer.write(w)
    folder = LayerFolder(tmp_path / "bin")
    for k, w in enumerate(network.layers, start=1):
        got = folder.layer(k)
        assert np.array_equal(got.indptr, w.indptr) and np.array_equal(got.indices, w.indices)
        assert np.array_equal(got.data, w.data)
    write_network(tmp_path / "tsv", network)
    load_network(tmp_path / "tsv", cache_dir=tmp_path / "cache")  # writes the cache
    warm = load_network(tmp_path / "tsv", cache_dir=tmp_path / "cache")  # 5 entries at a time
    assert all(abs(a - b).max() == 0 for a, b in zip(warm.layers, network.layers, strict=True))
    assert "unusable cache" not in caplog.text
    path = tmp_path / "bin" / layer_file(2)
    raw = bytearray(path.read_bytes())
    indices = np.frombuffer(raw, "<i4", network.layers[1].nnz, 8 * 65)
    indices[[9, 10]] = indices[[10, 9]]  # entries 9 and 10 of row 0: chunks 1 and 2
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFormatError, match="row 0: column ids unsorted or repeated"):
        LayerFolder(tmp_path / "bin").layer(2)
