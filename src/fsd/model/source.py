"""Layers on demand: a network that need never be whole in memory.

A :class:`LayerSource` hands out layer k when asked, so whoever walks the layers in order
(the streamed oracle, ``fsd generate``, planners, cutters) holds O(one layer) of weights.
Sources: an in-memory :class:`~fsd.model.network.Network` (:func:`as_source`), a binary layer
folder (:mod:`fsd.model.layers`) or a Graph Challenge TSV folder read layer by layer
(:func:`open_source`), and the generator (:class:`fsd.model.generate.RadixSource`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError
from fsd.model.network import YMAX, Network, bias_for
from fsd.model.tsv import (
    _check_neurons,
    _csr,
    available_layers,
    layer_path,
    model_folder,
    open_layer_folder,
    read_triples,
)

__all__ = ["LayerSource", "NetworkSource", "TsvSource", "as_source", "open_source"]


class LayerSource(Protocol):
    """A network's layers, read on demand (1-based k, shape (N, N), float32 or float64)."""

    neurons: int
    depth: int
    bias: float
    ymax: float

    def layer(self, k: int) -> sp.csr_matrix: ...

    def edges(self) -> int: ...


def _check_k(k: int, depth: int) -> None:
    if not 1 <= k <= depth:
        raise InputError(f"layer {k} is outside 1..{depth}")


class NetworkSource:
    """An in-memory Network seen as a LayerSource (its layers are not copied)."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.neurons = network.neurons
        self.depth = network.depth
        self.bias = network.bias
        self.ymax = network.ymax
        self.name = network.name

    def layer(self, k: int) -> sp.csr_matrix:
        _check_k(k, self.depth)
        return self.network.layers[k - 1]

    def edges(self) -> int:
        return self.network.edges


def as_source(network: Network) -> LayerSource:
    return NetworkSource(network)


class TsvSource:
    """A Graph Challenge TSV folder, one layer file parsed per :meth:`layer` call (no cache:
    the npz cache of :func:`~fsd.model.tsv.load_network` holds the whole net)."""

    def __init__(
        self,
        root: Path,
        neurons: int,
        layers: int | None = None,
        dtype: np.dtype[np.floating] | str = "float32",
    ) -> None:
        self.root = Path(root)
        _check_neurons(neurons, str(self.root / f"neuron{neurons}"))
        depth = available_layers(self.root, neurons)
        if layers is not None:
            if layers < 1:
                raise InputError(f"--layers must be >= 1, got {layers}")
            if layers > depth:
                layer_path(self.root, neurons, depth + 1)  # raises: names the missing file
            depth = layers
        self.neurons, self.depth = neurons, depth
        self.bias, self.ymax = bias_for(neurons), YMAX
        self.name = f"graphchallenge-{neurons}x{depth}"
        self.dtype = np.dtype(dtype)
        self._edges: dict[int, int] = {}

    def layer(self, k: int) -> sp.csr_matrix:
        _check_k(k, self.depth)
        n = self.neurons
        rows, cols, vals = read_triples(layer_path(self.root, n, k), (n, n), self.dtype)
        matrix = _csr(rows, cols, vals, (n, n))
        self._edges[k] = int(matrix.nnz)
        return matrix

    def edges(self) -> int:
        """Reads (one at a time) the layers not read yet: text files say their size only so."""
        for k in range(1, self.depth + 1):
            if k not in self._edges:
                self.layer(k)
        return sum(self._edges[k] for k in range(1, self.depth + 1))


def open_source(
    path: Path,
    neurons: int | None = None,
    layers: int | None = None,
    dtype: np.dtype[np.floating] | str = "float32",
) -> LayerSource:
    """A binary layer folder (``path`` or ``path/neuron{N}`` holding ``layers.json``) or a TSV
    challenge folder, read layer by layer; ``dtype`` is the engine's (weights finite in it)."""
    folder, tsv_neurons = model_folder(Path(path), neurons)
    if tsv_neurons is None:
        return open_layer_folder(folder, neurons, layers, dtype)
    return TsvSource(folder, tsv_neurons, layers, dtype)
