"""Graph Challenge TSV I/O: the real files, the cache, and precise errors for bad files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from fsd.errors import InputError, ModelFormatError
from fsd.model import Images, Network, load_images, load_network, write_images, write_network


def test_shared_network_shape(shared_net: Network) -> None:
    assert shared_net.neurons == 1024
    assert shared_net.depth == 120
    assert shared_net.bias == pytest.approx(-0.3)
    for w in shared_net.layers:
        assert (np.diff(w.indptr) == 32).all()
        assert np.all(w.data == 0.0625)


def test_shared_images_and_truth(shared_images: Images) -> None:
    assert shared_images.matrix.shape == (2000, 1024)
    assert len(shared_images.truth[120]) == 73
    assert shared_images.head(100).count == 100


def test_cache_gives_the_same_network(
    shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path))
    cold = load_network(shared_dir, layers=10)
    assert list(tmp_path.glob("net-*.npz"))
    warm = load_network(shared_dir, layers=10)
    for a, b in zip(cold.layers, warm.layers, strict=True):
        assert abs(a - b).max() == 0


def _tiny(tmp_path: Path, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    layers = [sp.csr_matrix(sp.random(16, 16, density=0.3, random_state=k)) for k in range(3)]
    write_network(tmp_path, Network(layers, -0.3))
    images = sp.csr_matrix((rng.random((5, 16)) > 0.5).astype(float))
    write_images(tmp_path, Images(images, {3: np.array([1, 4])}))
    if gz:
        for p in list(tmp_path.rglob("*.tsv")):
            p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
            p.unlink()
    return tmp_path


@pytest.mark.parametrize("gz", [False, True])
def test_write_then_read_round_trip(tmp_path: Path, gz: bool) -> None:
    root = _tiny(tmp_path, gz)
    net = load_network(root, cache=False)
    assert net.neurons == 16 and net.depth == 3
    images = load_images(root, 16)
    assert images.count == 5
    assert images.truth[3].tolist() == [1, 4]


def _corrupt(root: Path, line: int, text: str) -> Path:
    path = root / "neuron16" / "n16-l2.tsv"
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1\t2\t0.5\t7", "expected 3 fields"),
        ("1\t2", "expected 3 fields"),
        ("1\tx\t0.5", "not a number"),
        ("1\t2\tnan", "not finite"),
        ("1.5\t2\t0.5", "not an integer"),
        ("1\t17\t0.5", "outside 1..16"),
        ("0\t3\t0.5", "outside 1..16"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, reason: str) -> None:
    path = _corrupt(_tiny(tmp_path), 3, text)
    with pytest.raises(ModelFormatError) as info:
        load_network(tmp_path, cache=False)
    assert f"{path}:3" in str(info.value)
    assert reason in str(info.value)


def test_missing_things_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_network(tmp_path / "nope")
    root = _tiny(tmp_path)
    with pytest.raises(InputError, match=r"n16-l4\.tsv"):
        load_network(root, layers=4)
    (root / "neuron16" / "n16-l2.tsv").unlink()
    assert load_network(root, cache=False).depth == 1  # layers 1..L must be consecutive
    with pytest.raises(InputError, match=r"n16-l2\.tsv"):
        load_network(root, layers=3)
    with pytest.raises(InputError, match="image file missing"):
        load_images(root, 32)
    with pytest.raises(InputError, match="holds only 5"):
        load_images(root, 16, 6)


def test_empty_file_is_reported(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    (root / "neuron16" / "n16-l1.tsv").write_text("")
    with pytest.raises(ModelFormatError, match="empty"):
        load_network(root, cache=False)


def test_mismatched_dimensions(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="shape"):
        Network([sp.csr_matrix((4, 4)), sp.csr_matrix((4, 5))], -0.3)


def test_ambiguous_neuron_folders(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    (root / "neuron64").mkdir()
    with pytest.raises(InputError, match="cannot infer --neurons"):
        load_network(root)
    assert load_network(root, neurons=16, cache=False).neurons == 16
