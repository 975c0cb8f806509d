"""The serial oracle: the challenge's inference rule, written for clarity, in float64.

Every distributed run can be checked against it. Speed is the engine's job, not this module's.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from fsd.model.network import Network


def infer(network: Network, images: sp.csr_matrix) -> sp.csr_matrix:
    """Apply every layer: ``Y = min(max(Y @ W + bias on non-zeros of Y @ W, 0), ymax)``."""
    y = sp.csr_matrix(images, dtype=np.float64)
    for w in network.layers:
        z = (y @ w).tocsr()  # scipy's product keeps only the non-zeros of Z
        z.eliminate_zeros()
        z.data += network.bias  # bias only where Z != 0
        np.clip(z.data, 0.0, network.ymax, out=z.data)
        z.eliminate_zeros()  # ReLU zeros leave the sparsity pattern
        y = z
    return y


def categories(activations: sp.csr_matrix) -> np.ndarray:
    """Sorted 1-based ids of the images whose final row has any non-zero."""
    alive = np.flatnonzero(np.diff(activations.indptr) > 0)
    return alive.astype(np.int64) + 1


def row_sums(activations: sp.csr_matrix) -> np.ndarray:
    """Per-image sum of final activations: a cheap fingerprint to compare runs beyond categories."""
    return np.asarray(activations.sum(axis=1)).ravel()
