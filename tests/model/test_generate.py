"""The RadiX-Net generator and synthetic images: structure, determinism and behaviour like the
official Graph Challenge network on real and synthetic images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from fsd.errors import InputError
from fsd.model import load_images, load_network
from fsd.model.generate import canvas_shape, generate, radix_net, synthetic_images
from fsd.model.network import bias_for
from fsd.reference import categories, infer
from paths import SHARED
from sameness import same_csr


def shared_root() -> Path:
    if not (SHARED / "neuron1024").is_dir():
        pytest.skip(f"Graph Challenge data not found at {SHARED} (../shared is absent)")
    return SHARED


def reference_pattern(neurons: int, k: int) -> sp.csr_matrix:
    """kron(ones(16, 16), I + S^(-2^(k-1))) built independently of the generator."""
    b = neurons // 16
    local = np.arange(b)
    shift = sp.csr_matrix((np.ones(b), (local, (local - 2 ** (k - 1)) % b)), shape=(b, b))
    block = sp.identity(b, format="csr") + shift
    return sp.csr_matrix(sp.kron(np.ones((16, 16)), block) / 16.0)


def alive_fraction(net_seed: int, images: sp.csr_matrix) -> float:
    return len(categories(infer(radix_net(1024, 120, net_seed), images))) / images.shape[0]


@pytest.mark.parametrize(("neurons", "layers"), [(256, 9), (1024, 13), (2048, 8)])
def test_radix_structure(neurons: int, layers: int) -> None:
    net = radix_net(neurons, layers, seed=3)
    assert net.neurons == neurons
    assert net.depth == layers
    assert net.bias == bias_for(neurons)
    assert net.name == f"radix-{neurons}x{layers}"
    for w in net.layers:
        assert w.shape == (neurons, neurons)
        assert w.indices.dtype == np.int32
        assert w.data.dtype == np.float64
        assert np.all(w.data == 0.0625)
        assert np.all(np.diff(w.indptr) == 32)
        assert np.all(np.bincount(w.indices, minlength=neurons) == 32)
        per_row = w.indices.reshape(neurons, 32)
        assert np.all(np.diff(per_row, axis=1) > 0)  # sorted, no duplicates
        assert w.has_sorted_indices


def test_first_group_is_the_radix_pattern() -> None:
    net = radix_net(1024, 6, seed=7)
    for k, w in enumerate(net.layers, start=1):
        assert same_csr(w, reference_pattern(1024, k), canonical=True)


def test_later_groups_relabel_the_pattern() -> None:
    # 256 neurons: groups of 4 layers; layer 5 is layer 1 under the first drawn permutation.
    net = radix_net(256, 9, seed=11)
    perm = np.random.default_rng(11).permutation(256)
    for k in range(4):
        relabelled = net.layers[4 + k][perm][:, perm]
        assert same_csr(relabelled, net.layers[k], canonical=True)
    # a fresh relabelling per group
    assert not same_csr(net.layers[8], net.layers[4], canonical=True)


def test_radix_deterministic_per_seed() -> None:
    a, b, c = radix_net(1024, 14, 0), radix_net(1024, 14, 0), radix_net(1024, 14, 1)
    assert all(same_csr(x, y, canonical=True) for x, y in zip(a.layers, b.layers, strict=True))
    assert all(
        same_csr(x, y, canonical=True) for x, y in zip(a.layers[:6], c.layers[:6], strict=True)
    )
    assert not all(
        same_csr(x, y, canonical=True) for x, y in zip(a.layers[6:], c.layers[6:], strict=True)
    )


@pytest.mark.parametrize(("neurons", "layers"), [(1000, 4), (128, 4), (0, 4), (1024, 0)])
def test_radix_bad_arguments(neurons: int, layers: int) -> None:
    with pytest.raises(InputError):
        radix_net(neurons, layers)


def test_generated_layers_equal_official() -> None:
    official = load_network(shared_root(), layers=6)
    net = radix_net(1024, 6)
    for mine, theirs in zip(net.layers, official.layers, strict=True):
        assert same_csr(mine, theirs, canonical=True)
        assert np.array_equal(mine.indptr, theirs.indptr)
        assert np.array_equal(mine.indices, theirs.indices)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generated_net_on_real_images_behaves_like_official(seed: int) -> None:
    images = load_images(shared_root(), 1024).matrix
    assert images.shape[0] == 2000
    fraction = alive_fraction(seed, images)
    assert 0.01 <= fraction <= 0.10  # the official net keeps 3.65%


@pytest.mark.parametrize("neurons", [256, 1024, 2048, 4096])
def test_synthetic_images_shape_and_density(neurons: int) -> None:
    images = synthetic_images(neurons, 300, seed=5)
    m = images.matrix
    assert m.shape == (300, neurons)
    assert images.truth == {}
    assert m.has_sorted_indices
    assert m.data.dtype == np.float64
    assert np.all(m.data == 1.0)
    assert 0.06 <= m.nnz / m.shape[0] / neurons <= 0.16
    assert np.all(np.diff(m.indptr) > 0)  # every image has ink


def test_synthetic_images_centred_like_mnist() -> None:
    m = synthetic_images(1024, 500).matrix
    ink = np.asarray(m.sum(axis=0)).reshape(32, 32)
    assert ink[8:24, 8:24].sum() > 0.7 * ink.sum()
    assert ink[:3].sum() + ink[-3:].sum() + ink[:, :3].sum() + ink[:, -3:].sum() == 0


def test_synthetic_images_deterministic() -> None:
    a = synthetic_images(1024, 400, seed=0).matrix
    assert same_csr(a, synthetic_images(1024, 400, seed=0).matrix, canonical=True)
    assert not same_csr(a, synthetic_images(1024, 400, seed=1).matrix, canonical=True)
    head = synthetic_images(1024, 100, seed=0).matrix
    assert same_csr(a[:100], head, canonical=True)  # the first images do not depend on count


def test_canvas_shape() -> None:
    assert canvas_shape(1024) == (32, 32)
    assert canvas_shape(2048) == (32, 64)
    assert canvas_shape(65536) == (256, 256)


@pytest.mark.parametrize(("neurons", "count"), [(1024, 0), (0, 5)])
def test_synthetic_bad_arguments(neurons: int, count: int) -> None:
    with pytest.raises(InputError):
        synthetic_images(neurons, count)


@pytest.mark.parametrize(
    "make",
    [
        lambda: radix_net(2**40, 2),  # a power of two, but 4 TiB of column ids
        lambda: radix_net(256, 2, seed=-1),
        lambda: synthetic_images(256, 5, seed=-1),
    ],
    ids=["radix-huge", "radix-negative-seed", "images-negative-seed"],
)
def test_generator_bounds_before_allocating(make: Callable[[], object]) -> None:
    with pytest.raises(InputError):
        make()


def test_generate_keeps_some_synthetic_images_alive() -> None:
    net, images = generate(1024, 120, 2000, seed=0)
    assert net.depth == 120
    alive = images.truth[120]
    assert np.array_equal(alive, categories(infer(net, images.matrix)))
    assert 0.01 <= alive.size / 2000 <= 0.5
