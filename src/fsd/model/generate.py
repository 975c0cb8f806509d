"""Synthetic RadiX-Net networks and MNIST-like images, so every size can be run without downloads.

The networks reproduce the structure of the official Graph Challenge ones (see ``radix_net``):
the first group of layers equals the official 1024-neuron layers 1-6 exactly, and later groups
are the same pattern under a random relabelling, which is what the official files show.
Any layer can be made alone (:func:`radix_layer`, :class:`RadixSource`), and
:func:`generate_folder` writes a net of any depth one layer at a time, its images' truth
computed by the float64 oracle as the layers go by.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from fsd.errors import InputError
from fsd.model.layers import FORMATS, LayerWriter
from fsd.model.network import (
    MAX_LAYERS,
    MAX_LOADED_IMAGES,
    MAX_NEURONS,
    YMAX,
    Images,
    Network,
    bias_for,
)
from fsd.model.tsv import tsv_folder, write_images, write_layer
from fsd.reference import apply_layer, categories, infer, start

log = logging.getLogger(__name__)

#: Number of blocks per layer; each neuron reaches 2 neurons in every block, so 32 non-zeros.
BLOCKS = 16
#: Every weight of a RadiX-Net layer: 1/16, as in the official files.
WEIGHT = 1.0 / BLOCKS
#: Smallest supported size: 16 blocks of 16 neurons (4 layers per group).
MIN_NEURONS = 256
#: Cap on dense canvas cells rasterised at once, so 65536-neuron images stay within memory.
_CANVAS_CELLS = 1 << 24
#: Cap on stencil stamps evaluated at once (each costs a few temporaries of 4-8 bytes).
_STAMPS = 1 << 21


def _check_neurons(neurons: int) -> None:
    if not MIN_NEURONS <= neurons <= MAX_NEURONS or neurons & (neurons - 1):
        raise InputError(
            f"neurons must be a power of two from {MIN_NEURONS} to {MAX_NEURONS}, got {neurons}"
        )


def check_sizes(neurons: int, layers: int, images: int, seed: int = 0) -> None:
    """Raise InputError unless ``generate`` accepts these (cheap: before any folder or array)."""
    _check_neurons(neurons)
    if not 1 <= layers <= MAX_LAYERS:
        raise InputError(f"layers must be between 1 and {MAX_LAYERS}, got {layers}")
    if not 1 <= images <= MAX_LOADED_IMAGES:
        raise InputError(f"image count must be between 1 and {MAX_LOADED_IMAGES}, got {images}")
    _check_seed(seed)


def _check_seed(seed: int) -> None:
    if seed < 0:  # numpy's generators take only non-negative seeds
        raise InputError(f"seed must be >= 0, got {seed}")


def group_length(neurons: int) -> int:
    """Layers per group: ``log2(N/16)``."""
    return (neurons // BLOCKS).bit_length() - 1


def _pattern(neurons: int, k: int) -> np.ndarray:
    """Sorted column ids (N x 32) of layer ``k`` (1-based) of a group, identity labelling.

    Row i reaches, in every block q, local offsets ``a`` and ``a - 2^(k-1) mod b`` where
    ``a = i mod b``: that is ``kron(ones(16, 16), I + S^(-2^(k-1)))``.
    """
    b = neurons // BLOCKS
    local = np.arange(neurons, dtype=np.int32) % b
    starts = np.arange(BLOCKS, dtype=np.int32) * b
    shifted = (local - (1 << (k - 1))) % b
    cols = np.concatenate(
        [starts[None, :] + local[:, None], starts[None, :] + shifted[:, None]], axis=1
    )
    cols.sort(axis=1)
    return cols


def _csr(cols: np.ndarray, neurons: int) -> sp.csr_matrix:
    """A layer that owns ``cols``, an int32 N x 32 column table sorted per row."""
    degree = cols.shape[1]
    indptr = np.arange(0, neurons * degree + 1, degree, dtype=np.int32)
    data = np.full(neurons * degree, WEIGHT, dtype=np.float64)
    matrix = sp.csr_matrix((data, cols.ravel(), indptr), shape=(neurons, neurons))
    matrix.has_sorted_indices = True
    return matrix


def relabelling(neurons: int, group: int, seed: int) -> np.ndarray:
    """The permutation of group ``group`` (0-based; group 0 is the identity).

    Each group draws from its own generator, seeded with ``seed + (group - 1) * 2^64``, so any
    layer is made without the ones before it (distinct streams for seeds below 2^64), and
    group 1 gets the permutation that ``default_rng(seed)`` draws first.
    """
    if group == 0:
        return np.arange(neurons, dtype=np.int32)
    rng = np.random.default_rng(seed + ((group - 1) << 64))
    return rng.permutation(neurons).astype(np.int32)


def radix_layer(neurons: int, k: int, seed: int = 0) -> sp.csr_matrix:
    """Layer ``k`` (1-based) of ``radix_net(neurons, L, seed)`` for any L >= k, made alone."""
    _check_neurons(neurons)
    _check_seed(seed)
    if not 1 <= k <= MAX_LAYERS:
        raise InputError(f"layer must be between 1 and {MAX_LAYERS}, got {k}")
    group, pos = divmod(k - 1, group_length(neurons))
    cols = _pattern(neurons, pos + 1)
    if group > 0:  # new row r is old row inverse[r]; its columns are relabelled by perm
        perm = relabelling(neurons, group, seed)
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(neurons, dtype=np.int32)
        cols = perm[cols[inverse]]
        cols.sort(axis=1)
    return _csr(cols, neurons)


class RadixSource:
    """A RadiX-Net as a LayerSource: layer k is generated when asked, nothing is kept."""

    def __init__(self, neurons: int, layers: int, seed: int = 0) -> None:
        _check_neurons(neurons)
        _check_seed(seed)
        if not 1 <= layers <= MAX_LAYERS:
            raise InputError(f"layers must be between 1 and {MAX_LAYERS}, got {layers}")
        self.neurons, self.depth, self.seed = neurons, layers, seed
        self.bias, self.ymax = bias_for(neurons), YMAX
        self.name = f"radix-{neurons}x{layers}"

    def layer(self, k: int) -> sp.csr_matrix:
        if not 1 <= k <= self.depth:
            raise InputError(f"layer {k} is outside 1..{self.depth}")
        return radix_layer(self.neurons, k, self.seed)

    def edges(self) -> int:
        return self.neurons * BLOCKS * 2 * self.depth


def radix_net(neurons: int, layers: int, seed: int = 0) -> Network:
    """A RadiX-Net-shaped network like the Graph Challenge's, for any power-of-two size.

    Groups of ``log2(N/16)`` layers repeat one pattern; the first group uses the identity
    labelling (so N=1024 layers 1-6 equal the official ones) and every later group a fresh
    random relabelling ``W[p(i), p(j)] = pattern[i, j]`` drawn from ``seed`` and the group
    (:func:`relabelling`).
    """
    source = RadixSource(neurons, layers, seed)
    mats = [source.layer(k) for k in range(1, layers + 1)]
    log.debug("built radix net %dx%d", neurons, layers)
    return Network(layers=mats, bias=source.bias, name=source.name)


def canvas_shape(neurons: int) -> tuple[int, int]:
    """(height, width) of the image canvas: square when N is a square, else about 2:1 wide.

    For sizes that are neither squares nor powers of two the last row is partial; pixels past
    ``neurons`` are dropped.
    """
    side = math.isqrt(neurons)
    if side * side == neurons:
        return side, side
    width = 1 << math.ceil(math.log2(neurons) / 2)
    return -(-neurons // width), width


#: Images per random stream; a fixed size keeps the first k images the same for any count.
_BATCH = 256
#: Pen radius range in pixels of a 32x32 canvas (scaled with sqrt(N)), and strokes per image.
_PEN = (0.7, 1.55)
_STROKES = (2, 4)


def _stroke_points(rng: np.random.Generator, count: int, samples: int) -> np.ndarray:
    """Points (count, 4 strokes, samples, 2) in unit coordinates (row, col), digit-like shapes.

    Half the strokes are quadratic Bezier curves (bars, hooks), half elliptical arcs (loops,
    bowls); all stay in the central box, as MNIST digits do.
    """
    t = np.linspace(0.0, 1.0, samples)[None, None, :, None]
    shape = (count, _STROKES[1])
    lo, hi = 0.22, 0.78
    p0, p1, p2 = (rng.uniform(lo, hi, (*shape, 1, 2)) for _ in range(3))
    bezier = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t**2 * p2
    radius = rng.uniform(0.08, 0.2, (*shape, 1, 2))
    centre = rng.uniform(lo + 0.13, hi - 0.13, (*shape, 1, 2))
    start = rng.uniform(0.0, 2 * np.pi, (*shape, 1))
    sweep = rng.uniform(0.5 * np.pi, 2 * np.pi, (*shape, 1))
    angle = start + sweep * t[..., 0]
    arc = centre + radius * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    is_arc = rng.random((*shape, 1, 1)) < 0.5
    points: np.ndarray = np.where(is_arc, arc, bezier)
    return points


def synthetic_images(neurons: int, count: int, seed: int = 0) -> Images:
    """Deterministic sparse binary images drawn as 2-4 thick strokes, about 10% of pixels on.

    They stand in for MNIST where no real images exist for a size; their spread of densities
    makes a generated net keep some, not all, of them alive. The first k images do not depend
    on ``count``.
    """
    if not 1 <= neurons <= MAX_NEURONS:
        raise InputError(f"neurons must be between 1 and {MAX_NEURONS}, got {neurons}")
    if not 1 <= count <= MAX_LOADED_IMAGES:
        raise InputError(f"image count must be between 1 and {MAX_LOADED_IMAGES}, got {count}")
    _check_seed(seed)
    height, width = canvas_shape(neurons)
    scale = math.sqrt(neurons) / 32.0  # pixel lengths are tuned on the 32x32 canvas
    pen = (_PEN[0] * scale, _PEN[1] * scale)
    spacing = max(0.5, pen[0] / 2)  # dense enough that disks along a stroke leave no gaps
    samples = max(8, math.ceil(1.4 * max(height, width) / spacing))
    offsets = _stencil(pen[1])
    per_stroke = samples * offsets.shape[1]
    step = max(1, min(_CANVAS_CELLS // neurons, _STAMPS // (_STROKES[1] * per_stroke)))
    parts = []
    for batch, first in enumerate(range(0, count, _BATCH)):
        rng = np.random.default_rng([seed, batch])
        points = _stroke_points(rng, _BATCH, samples)
        strokes = rng.integers(_STROKES[0], _STROKES[1] + 1, _BATCH)
        thick = rng.uniform(pen[0], pen[1], _BATCH)
        size = min(_BATCH, count - first)
        for lo in range(0, size, step):
            hi = min(size, lo + step)
            canvas = _rasterise(
                points[lo:hi], strokes[lo:hi], thick[lo:hi], (height, width), offsets
            )
            rows, cols = np.nonzero(canvas.reshape(hi - lo, -1)[:, :neurons])
            data = np.ones(rows.size, dtype=np.float64)
            parts.append(sp.csr_matrix((data, (rows, cols)), shape=(hi - lo, neurons)))
    matrix = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
    matrix.sort_indices()
    return Images(matrix=matrix, truth={})


def _stencil(pen: float) -> np.ndarray:
    """(2, k) pixel offsets that a disk of radius ``pen`` around a point in its pixel can reach."""
    reach = math.ceil(pen + 0.5)
    span = np.arange(-reach, reach + 1)
    rr, cc = (a.ravel() for a in np.meshgrid(span, span, indexing="ij"))
    near = np.maximum(np.abs(rr) - 0.5, 0) ** 2 + np.maximum(np.abs(cc) - 0.5, 0) ** 2
    return np.stack([rr, cc])[:, near <= pen**2]


def _rasterise(
    points: np.ndarray,
    strokes: np.ndarray,
    thick: np.ndarray,
    shape: tuple[int, int],
    offsets: np.ndarray,
) -> np.ndarray:
    """Dense (count, height, width) canvases: a disk of radius ``thick`` at each stroke sample.

    Only the strokes each image uses are stamped; the stencil is pre-pruned to offsets a disk
    can reach, which keeps 10,000 images of 1024 pixels well under a second.
    """
    height, width = shape
    count = points.shape[0]
    pad = int(np.abs(offsets).max())
    tall, wide = height + 2 * pad, width + 2 * pad
    used = np.arange(points.shape[1])[None, :] < strokes[:, None]  # (count, 4)
    owner = np.broadcast_to(np.arange(count)[:, None], used.shape)[used]
    pts = points[used]  # (strokes used, samples, 2), unit coordinates
    pr = (pts[..., 0] * height - 0.5).astype(np.float32)  # pixel-centre coordinates
    pc = (pts[..., 1] * width - 0.5).astype(np.float32)
    br = np.clip(np.rint(pr), 0, height - 1)  # clipping only matters for strokes off the edge
    bc = np.clip(np.rint(pc), 0, width - 1)
    dr, dc = (br - pr)[..., None], (bc - pc)[..., None]
    off_r, off_c = offsets.astype(np.float32)
    dist2 = (dr + off_r) ** 2 + (dc + off_c) ** 2  # (strokes, samples, stencil)
    keep = dist2 <= (thick[owner] ** 2).astype(np.float32)[:, None, None]
    base = owner[:, None] * (tall * wide) + (br.astype(np.int64) + pad) * wide + bc.astype(np.int64)
    linear = base[..., None] + pad + (offsets[0] * wide + offsets[1])
    canvas = np.zeros((count, tall, wide), dtype=bool)
    canvas.ravel()[linear[keep]] = True
    return canvas[:, pad : pad + height, pad : pad + width]


def generate(neurons: int, layers: int, images: int, seed: int = 0) -> tuple[Network, Images]:
    """A generated net, synthetic images for it, and the oracle's answer as their truth."""
    network = radix_net(neurons, layers, seed)
    inputs = synthetic_images(neurons, images, seed)
    alive = categories(infer(network, inputs.matrix))
    inputs.truth[layers] = alive
    log.info(
        "generated %s with %d images: %d alive after %d layers",
        network.name,
        images,
        alive.size,
        layers,
    )
    return network, inputs


def generate_folder(
    out: Path, neurons: int, layers: int, images: int, seed: int = 0, fmt: str = "binary"
) -> Images:
    """Write a generated net, its images and their truth under ``out``, one layer at a time.

    Each layer is generated, written (``neuron{N}/`` as a binary layer folder, or TSV) and
    applied to the images by the float64 oracle before the next is made, so at most one
    layer of weights is ever held, whatever the depth. Returns the images with their truth.
    """
    check_sizes(neurons, layers, images, seed)
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}, got {fmt}")
    source = RadixSource(neurons, layers, seed)
    inputs = synthetic_images(neurons, images, seed)
    y = start(inputs.matrix)
    folder = Path(out) / f"neuron{neurons}"
    writer = None
    if fmt == "binary":  # weights 1/16: exact in float32, half the bytes
        writer = LayerWriter(folder, neurons, source.bias, source.ymax, "float32", source.name)
    else:
        tsv_folder(out, neurons)
    for k in range(1, layers + 1):
        w = source.layer(k)
        if writer is not None:
            writer.write(w)
        else:
            write_layer(out, neurons, k, w)
        y = apply_layer(y, w, source.bias, source.ymax)
        del w  # the next layer is made without this one alive
        log.debug("layer %d/%d written", k, layers)
    if writer is not None:
        writer.close()
    inputs.truth[layers] = categories(y)
    write_images(out, inputs)
    alive = inputs.truth[layers].size
    log.info("generated %s with %d images: %d alive", source.name, images, alive)
    return inputs
