"""Measure wire compression on real activation messages: none, zstd level 1 and 3, lz4.

Runs the shared net on one worker and, after every layer, builds the ACT message a 2-worker
contiguous split would send (the first half of the columns), then compresses its body.

    .venv/bin/python benchmarks/compression.py [--data ../shared/graphchallenge]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import zstandard

from fsd import kernels
from fsd.model import load_images, load_network

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    args = parser.parse_args()
    if not (args.data / "neuron1024").is_dir():
        print(f"benchmark data not found at {args.data}", file=sys.stderr)
        return 2
    net = load_network(args.data)
    images = load_images(args.data, 1024).matrix.tocsr().astype(np.float32)
    codecs: dict[str, Callable[[bytes], bytes]] = {
        "zstd-1": zstandard.ZstdCompressor(level=1).compress,
        "zstd-3": zstandard.ZstdCompressor(level=3).compress,
    }
    try:
        import lz4.frame

        codecs["lz4"] = lz4.frame.compress
    except ImportError:
        print("lz4 not installed: skipping it")
    size = dict.fromkeys(["raw u32/u32/f32", "row-compressed u16", *codecs], 0)
    secs = dict.fromkeys(codecs, 0.0)
    empty = kernels.empty_csr(images.shape[0], np.dtype(np.float32))
    y = (images.indptr.astype(np.int64), images.indices.astype(np.int32), images.data)
    half = images.shape[1] // 2
    selmap = np.where(np.arange(images.shape[1]) < half, np.arange(images.shape[1]), -1)
    for w in net.layers:
        m = sp.csr_matrix(w)
        t = sp.csr_matrix(m.transpose())
        weights = [
            a.astype(d)
            for a, d in zip(
                (m.indptr, m.indices, m.data, t.indptr, t.indices, t.data),
                (np.int64, np.int32, np.float32) * 2,
                strict=True,
            )
        ]
        y = kernels.finish_layer(*empty, *y, *weights, m.shape[1], net.bias, net.ymax)
        rows, counts, pos, vals = kernels.gather_columns(
            *y, selmap.astype(np.int32), np.empty(0, np.uint16)
        )
        body = b"".join(a.tobytes() for a in (rows, counts, pos, vals))
        size["raw u32/u32/f32"] += 12 * len(vals)
        size["row-compressed u16"] += len(body)
        for name, codec in codecs.items():
            t0 = time.perf_counter()
            size[name] += len(codec(body))
            secs[name] += time.perf_counter() - t0
    for name, total in size.items():
        extra = f"  {secs[name] * 1e3:7.1f} ms" if name in secs else ""
        print(f"{name:<20} {total / 1e6:8.3f} MB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
