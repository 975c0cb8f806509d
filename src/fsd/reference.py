"""The serial oracle: the challenge's inference rule, written for clarity, in float64.

Every distributed run can be checked against it. Speed is the engine's job, not this module's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from fsd.model.network import Network

if TYPE_CHECKING:
    from fsd.model.source import LayerSource


def start(images: sp.csr_matrix) -> sp.csr_matrix:
    """The activations before layer 1: the images in float64."""
    return sp.csr_matrix(images, dtype=np.float64)


def apply_layer(y: sp.csr_matrix, w: sp.csr_matrix, bias: float, ymax: float) -> sp.csr_matrix:
    """One layer: ``Y = min(max(Y @ W + bias on non-zeros of Y @ W, 0), ymax)``."""
    z: sp.csr_matrix = (y @ w.astype(np.float64, copy=False)).tocsr()  # keeps non-zeros of Z
    z.eliminate_zeros()
    z.data += bias  # bias only where Z != 0
    np.clip(z.data, 0.0, ymax, out=z.data)
    z.eliminate_zeros()  # ReLU zeros leave the sparsity pattern
    return z


def infer(network: Network, images: sp.csr_matrix) -> sp.csr_matrix:
    """Apply every layer of an in-memory network."""
    y = start(images)
    for w in network.layers:
        y = apply_layer(y, w, network.bias, network.ymax)
    return y


def infer_streamed(source: LayerSource, images: sp.csr_matrix) -> sp.csr_matrix:
    """Apply layers 1..depth of ``source`` one at a time: O(one layer) of weights in memory."""
    y = start(images)
    for k in range(1, source.depth + 1):
        y = apply_layer(y, source.layer(k), source.bias, source.ymax)
    return y


def categories(activations: sp.csr_matrix) -> np.ndarray:
    """Sorted 1-based ids of the images whose final row has any non-zero."""
    alive = np.flatnonzero(np.diff(activations.indptr) > 0)
    return alive.astype(np.int64) + 1


def row_sums(activations: sp.csr_matrix) -> np.ndarray:
    """Per-image sum of final activations: a cheap fingerprint to compare runs beyond categories."""
    return np.asarray(activations.sum(axis=1)).ravel()
