"""Graph Challenge TSV I/O: the real files, the cache, and precise errors for bad files."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
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


def test_cache_gives_the_same_network(shared_dir: Path, tmp_path: Path) -> None:
    cold = load_network(shared_dir, layers=10, cache_dir=tmp_path)
    assert list(tmp_path.glob("net-*.npz"))
    warm = load_network(shared_dir, layers=10, cache_dir=tmp_path)
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
        ("1\t2\t1e39", "value 1e39 overflows float32"),  # finite in float64 only
        ("{line2}", "duplicate entry"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, text: str, reason: str) -> None:
    root = _tiny(tmp_path)
    line2 = (root / "neuron16" / "n16-l2.tsv").read_text().splitlines()[1]
    path = _corrupt(root, 3, text.replace("{line2}", line2))
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


def _rewrite_member(cache: Path, member: str, change: Callable[[bytes], bytes]) -> None:
    """Replace the bytes of one member of an npz cache by ``change(bytes)``, keeping the rest."""
    with zipfile.ZipFile(cache) as zin:
        members = {info.filename: zin.read(info) for info in zin.infolist()}
    members[member] = change(members[member])
    with zipfile.ZipFile(cache, "w") as zout:
        for name, raw in members.items():
            zout.writestr(name, raw)


def _array_change(change: Callable[[np.ndarray], None]) -> Callable[[bytes], bytes]:
    def apply(raw: bytes) -> bytes:
        array = np.load(io.BytesIO(raw))
        change(array)
        buf = io.BytesIO()
        np.save(buf, array)
        return buf.getvalue()

    return apply


def _garbage(cache: Path) -> None:
    cache.write_bytes(b"PK\x03\x04" + bytes(100))


def _truncated(cache: Path) -> None:
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])


def _forged_header(cache: Path) -> None:
    """A header that claims 80 billion values (640 GB) for a short array: never allocated."""

    def forge(raw: bytes) -> bytes:
        fh = io.BytesIO(raw)
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        out = io.BytesIO()
        header = {"descr": "<f8", "fortran_order": False, "shape": (80_000_000_000,)}
        np.lib.format.write_array_header_1_0(out, header)
        return out.getvalue() + raw[fh.tell() :]

    _rewrite_member(cache, "x1.npy", forge)


def _not_finite(cache: Path) -> None:
    def poison(array: np.ndarray) -> None:
        array[3] = np.inf

    _rewrite_member(cache, "x2.npy", _array_change(poison))


def _column_out_of_range(cache: Path) -> None:
    def stray(array: np.ndarray) -> None:
        array[-1] = 10**6

    _rewrite_member(cache, "i0.npy", _array_change(stray))


def _unsorted(cache: Path) -> None:
    def swap(array: np.ndarray) -> None:
        array[[0, 1]] = array[[1, 0]]

    _rewrite_member(cache, "i0.npy", _array_change(swap))


@pytest.mark.parametrize(
    "damage", [_garbage, _truncated, _forged_header, _not_finite, _column_out_of_range, _unsorted]
)
def test_unusable_cache_is_rebuilt(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    cache_dir = tmp_path / "cache"
    root = _tiny(tmp_path / "data")
    truth = load_network(root, cache=False)
    load_network(root, cache_dir=cache_dir)
    (cache,) = (tmp_path / "cache").glob("net-*.npz")
    damage(cache)
    again = load_network(root, cache_dir=cache_dir)
    for a, b in zip(truth.layers, again.layers, strict=True):
        assert a.shape == b.shape and abs(a - b).max() == 0
        assert np.array_equal(a.indices, b.indices)
    assert load_network(root, cache_dir=cache_dir).depth == 3  # the rebuilt cache is good


def test_weights_are_checked_in_the_engine_dtype(tmp_path: Path) -> None:
    root = _tiny(tmp_path)
    row, col, _ = (root / "neuron16" / "n16-l2.tsv").read_text().splitlines()[2].split("\t")
    path = _corrupt(root, 3, f"{row}\t{col}\t1e300")
    assert load_network(root, cache=False, dtype="float64").layers[1].max() == 1e300
    with pytest.raises(ModelFormatError, match=rf"{path}:3: value 1e300 overflows float32"):
        load_network(root, dtype="float32")  # also when the float64 load left a cache


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_broken_gzip_names_the_file(tmp_path: Path, cut: str) -> None:
    root = _tiny(tmp_path, gz=True)
    path = root / "neuron16" / "n16-l2.tsv.gz"
    data = gzip.compress(b"".join(b"%d\t%d\t0.5\n" % (r, c) for r in range(1, 17) for c in (1, 2)))
    if cut == "truncated":
        data = data[: len(data) // 2]
    else:
        data = data[:12] + bytes(len(data) - 20) + data[-8:]
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=rf"{path}:\d+: corrupt or truncated gzip"):
        load_network(root, cache=False)


def test_image_ids_are_capped_unless_a_count_is_given(tmp_path: Path) -> None:
    from fsd.model.network import MAX_LOADED_IMAGES

    root = _tiny(tmp_path)
    far = MAX_LOADED_IMAGES + 1
    with (root / "sparse-images-16.tsv").open("a") as fh:
        fh.write(f"{far}\t3\t1\n")
    with pytest.raises(
        ModelFormatError, match=f"id {far} in field 1 is outside 1..{MAX_LOADED_IMAGES}"
    ):
        load_images(root, 16)
    head = load_images(root, 16, 2)  # only the first 2 rows are kept: nothing sized by the id
    assert head.matrix.shape == (2, 16)


@pytest.mark.parametrize("gz", [False, True])
def test_images_are_parsed_in_chunks_and_the_first_k_read_no_further(
    tmp_path: Path, gz: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is parsed a few lines at a time (never whole twice in memory); asked for its
    first K images, a file sorted by image is read no further than the first line past them:
    a broken line after them is never reached, while the whole file is refused for it."""
    from fsd.model import tsv

    monkeypatch.setattr(tsv, "CHUNK_LINES", 3)
    root = _tiny(tmp_path)
    whole = load_images(root, 16)
    path = root / "sparse-images-16.tsv"
    path.write_text(path.read_text() + "5\t99\tnot a number\n")
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    for k in (1, 2, 4):
        head = load_images(root, 16, k)
        assert np.array_equal(head.matrix.toarray(), whole.matrix[:k].toarray())
        assert head.truth[3].tolist() == [t for t in (1, 4) if t <= k]
    with pytest.raises(ModelFormatError, match=r"sparse-images-16\.tsv(\.gz)?:\d+: "):
        load_images(root, 16)


def test_duplicates_are_found_across_chunks_of_an_unsorted_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsd.model import tsv

    monkeypatch.setattr(tsv, "CHUNK_LINES", 2)
    root = _tiny(tmp_path)
    path = root / "sparse-images-16.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[::-1], lines[0]]) + "\n")  # unsorted, one pair twice
    with pytest.raises(ModelFormatError, match=r"twice|duplicate"):
        load_images(root, 16)
    path.write_text("\n".join(lines[::-1]) + "\n")  # unsorted alone is fine
    assert np.array_equal(
        load_images(root, 16).matrix.toarray(), load_images(root, 16, 5).matrix.toarray()
    )


def test_a_duplicate_of_a_line_in_a_sorted_first_chunk_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order breaking in a later chunk still checks every earlier line for duplicates."""
    from fsd.model import tsv

    monkeypatch.setattr(tsv, "CHUNK_LINES", 3)
    root = _tiny(tmp_path)
    path = root / "sparse-images-16.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[0]]) + "\n")  # sorted, then the first line again
    with pytest.raises(ModelFormatError, match=r"twice|duplicate"):
        load_images(root, 16)
