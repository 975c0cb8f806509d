"""The binary per-layer model format, layer sources, the streamed oracle and streamed generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from fsd import cli
from fsd.errors import InputError, ModelFormatError
from fsd.model import Network, load_images, load_network
from fsd.model import generate as gen
from fsd.model.generate import generate, generate_folder, radix_layer, radix_net
from fsd.model.layers import HEADER, LayerFolder, LayerWriter, layer_file
from fsd.model.network import MAX_LAYERS, MAX_NEURONS
from fsd.model.source import as_source, open_source
from fsd.reference import categories, infer, infer_streamed
from sameness import same_csr


def write_binary(folder: Path, network: Network, dtype: str = "float32") -> None:
    with LayerWriter(folder, network.neurons, network.bias, network.ymax, dtype) as writer:
        for w in network.layers:
            writer.write(w)


def random_net(neurons: int, layers: int) -> Network:
    mats = [
        sp.csr_matrix(sp.random(neurons, neurons, density=0.05, random_state=k).tocsr())
        for k in range(layers)
    ]
    for w in mats:
        w.data -= 0.3  # negative weights too
    return Network(mats, -0.2)


# --- the format ------------------------------------------------------------------------------


def test_round_trip_float32_and_float64(tmp_path: Path) -> None:
    net = radix_net(1024, 8, seed=2)
    write_binary(tmp_path / "a", net, "float32")
    back = LayerFolder(tmp_path / "a")
    assert (back.neurons, back.depth, back.bias, back.ymax) == (1024, 8, net.bias, net.ymax)
    assert back.edges() == net.edges
    for k, w in enumerate(net.layers, start=1):
        got = back.layer(k)
        assert got.data.dtype == np.float32 and same_csr(got, w)
    odd = random_net(310, 3)  # odd edge counts: the indices are padded to 8 bytes
    assert any(w.nnz % 2 for w in odd.layers)
    write_binary(tmp_path / "b", odd, "float64")
    back = LayerFolder(tmp_path / "b")
    assert all(same_csr(back.layer(k), w) for k, w in enumerate(odd.layers, start=1))
    assert load_network(tmp_path / "b").edges == odd.edges


def test_writer_refuses_weights_not_exact_in_its_dtype(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not exact in float32"):
        LayerWriter(tmp_path, 300, -0.2).write(random_net(300, 1).layers[0])


def test_file_layout_is_the_documented_one(tmp_path: Path) -> None:
    """indptr int64, indices int32 padded to 8 bytes, data: readable with np.memmap alone."""
    w = random_net(40, 1).layers[0]
    write_binary(tmp_path, Network([w], 0.0), "float64")
    path = tmp_path / layer_file(1)
    e = w.nnz
    pad = -(-4 * e // 8) * 8
    assert path.stat().st_size == 8 * 41 + pad + 8 * e
    indptr = np.memmap(path, "<i8", "r", 0, (41,))
    indices = np.memmap(path, "<i4", "r", 8 * 41, (e,))
    data = np.memmap(path, "<f8", "r", 8 * 41 + pad, (e,))
    assert same_csr(sp.csr_matrix((data, indices, indptr), shape=(40, 40)), w)
    header = json.loads((tmp_path / HEADER).read_text())
    assert header["edges"] == [e] and header["dtype"] == "float64"


def test_tsv_and_binary_sources_give_identical_layers(tmp_path: Path) -> None:
    images = {}
    for fmt in ("binary", "tsv"):
        images[fmt] = generate_folder(tmp_path / fmt, 1024, 8, 50, seed=3, fmt=fmt)
    binary, tsv = open_source(tmp_path / "binary"), open_source(tmp_path / "tsv")
    assert type(binary).__name__ == "LayerFolder" and type(tsv).__name__ == "TsvSource"
    assert (binary.neurons, binary.depth, binary.bias) == (tsv.neurons, tsv.depth, tsv.bias)
    for k in range(1, 9):
        assert same_csr(binary.layer(k), tsv.layer(k))
    assert binary.edges() == tsv.edges() == 1024 * 32 * 8
    assert np.array_equal(images["binary"].truth[8], images["tsv"].truth[8])
    nets = [load_network(tmp_path / fmt, cache=False) for fmt in ("binary", "tsv")]
    assert all(same_csr(a, b) for a, b in zip(nets[0].layers, nets[1].layers, strict=True))


def test_official_tsv_source_is_the_loaded_network(shared_dir: Path, shared_net: Network) -> None:
    source = open_source(shared_dir, layers=4)
    assert source.depth == 4
    for k in range(1, 5):
        assert same_csr(source.layer(k), shared_net.layers[k - 1])


def test_open_source_takes_the_layer_folder_itself_and_a_layer_count(tmp_path: Path) -> None:
    generate_folder(tmp_path, 256, 6, 10)
    source = open_source(tmp_path / "neuron256", layers=4)
    assert source.depth == 4 and source.edges() == 256 * 32 * 4
    with pytest.raises(InputError, match=r"outside 1\.\.4"):
        source.layer(5)
    with pytest.raises(InputError, match=r"holds layers 1\.\.6"):
        open_source(tmp_path, layers=7)
    with pytest.raises(InputError, match="--neurons 512"):
        open_source(tmp_path / "neuron256", neurons=512)
    assert load_network(tmp_path, layers=3).depth == 3


# --- the streamed oracle ---------------------------------------------------------------------


def test_streamed_oracle_equals_the_whole_net_oracle(tmp_path: Path) -> None:
    net, images = generate(1024, 14, 120, seed=1)  # two groups: relabelled layers too
    whole = infer(net, images.matrix)
    write_binary(tmp_path, net)
    for source in (as_source(net), open_source(tmp_path), gen.RadixSource(1024, 14, 1)):
        streamed = infer_streamed(source, images.matrix)
        assert np.array_equal(categories(streamed), images.truth[14])
        assert (abs(streamed - whole)).max() == 0


# --- hostile model folders -------------------------------------------------------------------


def _header(folder: Path, **change: Any) -> None:
    path = folder / HEADER
    doc = json.loads(path.read_text())
    doc.update(change)
    path.write_text(json.dumps(doc))


def _raw_header(text: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        (folder / HEADER).write_text(text)

    return write


def _rewrite(k: int, change: Callable[[np.ndarray, np.ndarray, np.ndarray], None]) -> Any:
    """Change layer k's arrays in place in its file (same size)."""

    def apply(folder: Path) -> None:
        n, path = 256, folder / layer_file(k)
        raw = bytearray(path.read_bytes())
        e = (len(raw) - 8 * (n + 1)) // 8  # float32 data, 4-byte indices, e even
        indptr = np.frombuffer(raw, "<i8", n + 1)
        indices = np.frombuffer(raw, "<i4", e, 8 * (n + 1))
        data = np.frombuffer(raw, "<f4", e, 8 * (n + 1) + 4 * e)
        change(indptr, indices, data)
        path.write_bytes(bytes(raw))

    return apply


def _set(array: int, pos: int, value: float) -> Any:
    def change(*arrays: np.ndarray) -> None:
        arrays[array][pos] = value

    return _rewrite(2, change)


def _truncate(folder: Path) -> None:
    path = folder / layer_file(2)
    path.write_bytes(path.read_bytes()[:-1000])


def _swap(folder: Path) -> None:
    def change(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray) -> None:
        indices[[3, 4]] = indices[[4, 3]]

    _rewrite(2, change)(folder)


def _remove(folder: Path) -> None:
    (folder / layer_file(3)).unlink()


def _fifo(folder: Path) -> None:
    (folder / layer_file(2)).unlink()
    os.mkfifo(folder / layer_file(2))  # opening it for reading would wait for a writer


HOSTILE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated-layer": (_truncate, "bytes, but the header's 256 neurons and 8192 edges make"),
    "missing-layer": (_remove, "cannot read"),
    "layer-a-fifo": (_fifo, "not a regular file"),
    "header-lies-edges": (lambda f: _header(f, edges=[8192, 8193, 8192]), "make"),
    "header-lies-neurons": (lambda f: _header(f, neurons=512), "header's 512 neurons"),
    "header-huge-edges": (
        lambda f: _header(f, neurons=MAX_NEURONS, edges=[MAX_NEURONS**2] * 3),
        "bytes, but the header's",
    ),
    "absurd-neurons": (lambda f: _header(f, neurons=2**40), f"neurons={2**40} is outside"),
    "absurd-layers": (lambda f: _header(f, layers=2**40), f"layers={2**40} is outside"),
    "too-many-layers": (
        lambda f: _header(f, layers=MAX_LAYERS + 1, edges=[0] * (MAX_LAYERS + 1)),
        "is outside 1..",
    ),
    "edges-too-many": (lambda f: _header(f, edges=[2**62] * 3), "edges[1]="),
    "edges-count-wrong": (lambda f: _header(f, edges=[8192] * 2), "a list of 3 counts"),
    "neurons-a-bool": (lambda f: _header(f, neurons=True), "must be an integer"),
    "neurons-a-float": (lambda f: _header(f, neurons=256.0), "must be an integer"),
    "bias-nan": (_raw_header('{"bias": NaN}'), "not a JSON header"),
    "ymax-negative": (lambda f: _header(f, ymax=-1), "ymax=-1"),
    "dtype-object": (lambda f: _header(f, dtype="object"), "dtype must be one of"),
    "version-2": (lambda f: _header(f, version=2), "version=2"),
    "format-other": (lambda f: _header(f, format="npz"), "format must be"),
    "unknown-field": (lambda f: _header(f, extra=1), "unknown fields ['extra']"),
    "not-json": (_raw_header("\xff\xfe not json"), "not a JSON header"),
    "not-an-object": (_raw_header("[1, 2]"), "must be a JSON object"),
    "deep-nesting": (_raw_header("[" * 100000 + "]" * 100000), "not a JSON header"),
    "header-too-big": (_raw_header(" " * (2 << 20)), "header larger than"),
    "nan-weight": (_set(2, 5, float("nan")), "weights must be finite"),
    "inf-weight": (_set(2, 0, float("inf")), "weights must be finite"),
    "index-out-of-range": (_set(1, 7, 256), "column id 256 outside 0..255"),
    "index-negative": (_set(1, 7, -1), "column id -1 outside 0..255"),
    "unsorted-indices": (_swap, "row 0: column ids unsorted or repeated"),
    "duplicate-index": (_set(1, 33, 0), "row 1: column ids unsorted or repeated"),
    "indptr-not-from-0": (_set(0, 0, 1), "indptr must run from 0 to 8192"),
    "indptr-decreasing": (_set(0, 5, 0), "indptr decreases"),
}


@pytest.mark.parametrize("case", HOSTILE, ids=list(HOSTILE))
def test_hostile_model_folders_are_refused_before_any_big_allocation(
    tmp_path: Path, case: str
) -> None:
    break_it, message = HOSTILE[case]
    write_binary(tmp_path, radix_net(256, 3, seed=4))
    break_it(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError, match="^" + str(tmp_path)) as caught:
            source = open_source(tmp_path)
            for k in range(1, source.depth + 1):
                source.layer(k)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message in str(caught.value)
    assert peak < 8 << 20  # a layer here is 100 KB; a forged size would ask for terabytes
    with pytest.raises(ModelFormatError):
        load_network(tmp_path, cache=False)


def test_weights_are_checked_in_the_engine_dtype(tmp_path: Path) -> None:
    w = random_net(64, 1).layers[0]
    w.data[3] = 1e300  # finite in float64 only
    write_binary(tmp_path, Network([w], -0.1), "float64")
    assert load_network(tmp_path, dtype="float64").edges == w.nnz
    with pytest.raises(ModelFormatError, match="finite \\(in float32\\)"):
        load_network(tmp_path, dtype="float32")


# --- generating layer by layer ---------------------------------------------------------------


def test_any_layer_is_made_alone_and_equals_the_whole_net() -> None:
    net = radix_net(256, 13, seed=9)  # groups of 4: layers 5..13 relabelled
    for k in (13, 1, 6, 9):
        assert same_csr(radix_layer(256, k, 9), net.layers[k - 1])
    with pytest.raises(InputError):
        radix_layer(256, 0)


@pytest.mark.parametrize("fmt", ["binary", "tsv"])
def test_fsd_generate_holds_one_layer_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Count the generator's layer matrices alive whenever a new one is made."""
    made = gen._csr
    alive: list[weakref.ref[sp.csr_matrix]] = []
    most = [0]

    def counted(cols: np.ndarray, neurons: int) -> sp.csr_matrix:
        matrix = made(cols, neurons)
        alive.append(weakref.ref(matrix))
        most[0] = max(most[0], sum(r() is not None for r in alive))
        return matrix

    monkeypatch.setattr(gen, "_csr", counted)
    out = tmp_path / fmt
    argv = ["generate", "--neurons", "256", "--layers", "12", "--images", "40", "--out", str(out)]
    assert cli.main([*argv, "--format", fmt]) == 0
    assert len(alive) == 12 and most[0] == 1
    monkeypatch.setattr(gen, "_csr", made)
    images = load_images(out, 256)
    net, expected = generate(256, 12, 40)
    assert np.array_equal(images.truth[12], expected.truth[12])
    assert all(same_csr(a, b) for a, b in zip(load_network(out).layers, net.layers, strict=True))


def test_generate_then_run_on_the_binary_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    argv = ["generate", "--neurons", "256", "--layers", "9", "--images", "40", "--out", str(out)]
    assert cli.main(argv) == 0
    assert (out / "neuron256" / HEADER).is_file()
    assert not list((out / "neuron256").glob("*.tsv"))
    capsys.readouterr()
    assert cli.main(["run", "--data", str(out), "--workers", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert answer["checked_against"] == "truth" and answer["correct"] is True
    assert cli.main([*argv, "--format", "tsv"]) == 0  # TSV over it: the stale header goes
    assert not (out / "neuron256" / HEADER).exists()
    assert load_network(out, cache=False).depth == 9


def test_a_bad_layer_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    generate_folder(tmp_path, 256, 3, 10)
    _set(2, 5, float("nan"))(tmp_path / "neuron256")
    done = subprocess.run(
        [sys.executable, "-m", "fsd.cli", "run", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'neuron256' / layer_file(2)}: weights must be finite" in done.stderr
