"""Side-by-side benchmark on the shared Graph Challenge net (2000 images), as ratios to baselines.

fsd with 1 and 2 workers (local channel) against the naive scipy oracle and SuiteSparse:GraphBLAS
(a 2019 Graph Challenge champion's library) on 1 and 2 threads. Each timing is the best of
``--repeat`` runs; loading and planning are excluded everywhere, as in the challenge.

    .venv/bin/python benchmarks/run.py [--data ../shared/graphchallenge] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import reference
from fsd.coordinator import RunConfig, infer, prepare
from fsd.model import Images, Network, load_images, load_network
from fsd.partition import PARTITIONERS, make_plan

ROOT = Path(__file__).resolve().parents[1]


def _best(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.empty(0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def graphblas_runner(network: Network, images: sp.csr_matrix, threads: int) -> Callable[[], Any]:
    """The challenge loop written the GraphBLAS way (plus_times mxm, then in-place masks)."""
    import graphblas as gb

    gb.ss.config["nthreads"] = threads
    weights = [gb.io.from_scipy_sparse(w.astype(np.float32)) for w in network.layers]
    y0 = gb.io.from_scipy_sparse(sp.csr_matrix(images, dtype=np.float32))
    bias, ymax = float(network.bias), float(network.ymax)

    def run() -> np.ndarray:
        y = y0.dup()
        for w in weights:
            y << gb.semiring.plus_times(y @ w)
            y << y.apply(gb.binary.plus, bias)
            y << gb.select.valuegt(y, 0)
            y << y.apply(gb.binary.min, ymax)
        rows, _, _ = y.to_coo()
        return np.unique(rows) + 1

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    args = parser.parse_args()
    if not (args.data / "neuron1024").is_dir():
        print(f"benchmark data not found at {args.data}", file=sys.stderr)
        return 2
    network = load_network(args.data)
    images: Images = load_images(args.data, 1024)
    truth = images.truth[120]
    rows: list[dict[str, Any]] = []

    def record(name: str, seconds: float, cats: np.ndarray, **extra: Any) -> None:
        ok = bool(np.array_equal(cats, truth))
        rows.append({"name": name, "seconds": round(seconds, 4), "correct": ok, **extra})
        print(f"{name:<34} {seconds:8.3f} s  correct={ok}", flush=True)

    secs, cats = _best(lambda: reference.categories(reference.infer(network, images.matrix)), 1)
    record("scipy oracle (serial, float64)", secs, cats)
    for threads in (1, 2):
        secs, cats = _best(graphblas_runner(network, images.matrix, threads), args.repeat)
        record(f"graphblas {threads} thread(s)", secs, cats)
    for workers, partitions in ((1, ("contiguous",)), (2, ("contiguous", "min-comm"))):
        for partition in partitions:
            config = RunConfig(workers=workers, partition=partition)
            prepared = prepare(network, config)
            best: Any = None
            for _ in range(args.repeat):
                result = infer(prepared, images.matrix, config)
                if best is None or result.seconds < best.seconds:
                    best = result
            record(
                f"fsd {workers} worker(s), {partition}",
                best.seconds,
                best.categories,
                comm_share=round(best.comm_share, 3),
                bytes=best.bytes_sent,
                messages=best.messages,
            )
    plans = {m: make_plan(network, 8, m).total_volume for m in PARTITIONERS}
    print(f"planned crossing activations, 8 workers: {plans}")
    by = {r["name"]: r["seconds"] for r in rows}
    ratios = {
        "fsd1/graphblas1": by["fsd 1 worker(s), contiguous"] / by["graphblas 1 thread(s)"],
        "fsd2/graphblas2": min(by["fsd 2 worker(s), contiguous"], by["fsd 2 worker(s), min-comm"])
        / by["graphblas 2 thread(s)"],
    }
    for key, value in ratios.items():
        print(f"{key:<20} {value:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "ratios": ratios, "plans_8": plans}, indent=2))
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
