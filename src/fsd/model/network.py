"""The sparse DNN and its inputs as plain CSR matrices, plus the Graph Challenge constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError

#: Bias per network size, from the Graph Challenge rules.
CHALLENGE_BIAS: dict[int, float] = {1024: -0.30, 4096: -0.35, 16384: -0.40, 65536: -0.45}
#: Activations are capped at this value after ReLU.
YMAX = 32.0
#: Caps on sizes that come from flags, folder names or file contents, checked before anything
#: sized by them is allocated, so no hostile number can force a huge allocation. Each is far above
#: the Graph Challenge's largest (65536 neurons, 1920 layers, 60000 images).
MAX_NEURONS = 1 << 20
MAX_LAYERS = 1 << 15
MAX_LOADED_IMAGES = 1 << 20
"""Most images a command loads, generates or names (``--images``): they are held in memory."""
#: The value types of weights and activations (``--dtype``): the one list, which every module
#: checking a dtype imports.
DTYPES = ("float32", "float64")


def bias_for(neurons: int) -> float:
    """The challenge bias for ``neurons``; other sizes follow the same log4 trend."""
    if neurons in CHALLENGE_BIAS:
        return CHALLENGE_BIAS[neurons]
    steps = np.log(neurons / 1024) / np.log(4)
    return float(round(-0.30 - 0.05 * steps, 6))


@dataclass
class Network:
    """``layers[k]`` holds layer k+1 (graph convention: entry (i, j) is the edge i -> j)."""

    layers: list[sp.csr_matrix]
    bias: float
    ymax: float = YMAX
    name: str = "network"

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("a network needs at least one layer")
        n = self.neurons
        for k, w in enumerate(self.layers, start=1):
            if w.shape != (n, n):
                raise InputError(f"layer {k} has shape {w.shape}, expected ({n}, {n})")

    @property
    def neurons(self) -> int:
        return int(self.layers[0].shape[0])

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def edges(self) -> int:
        """Total number of connections, the numerator of the challenge's edges/second."""
        return int(sum(w.nnz for w in self.layers))

    def truncated(self, layers: int) -> Network:
        return Network(self.layers[:layers], self.bias, self.ymax, self.name)


@dataclass
class Images:
    """Input activations, one row per image (0-based here; 1-based ids only at the edges)."""

    matrix: sp.csr_matrix
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # layers -> sorted 1-based ids

    @property
    def count(self) -> int:
        return int(self.matrix.shape[0])

    def head(self, k: int) -> Images:
        """The first ``k`` images, with truth restricted to them."""
        truth = {depth: ids[ids <= k] for depth, ids in self.truth.items()}
        return Images(self.matrix[:k].tocsr(), truth)
