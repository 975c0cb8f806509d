"""Scale benchmark (issue 12): generated 65536-neuron nets of growing depth, run by ``fsd run``
with 8 workers of 2048 MB each, every process's peak memory measured.

Each net is generated once into ``--cache`` (binary layer folders, ``fsd generate``: about 2 GB
of disk per 120 layers) and reused. Each run is ``fsd run --data NET --workers 8 --memory-mb 2048
--json`` in its own process under ``/usr/bin/time -v`` (the coordinator's peak); the workers'
peaks are in the run's ``peak_rss_mb`` (the largest process of the run). Every run is checked
against the truth ``fsd generate`` wrote with its streamed float64 oracle (all images).

    .venv/bin/python benchmarks/scale.py --layers 120,480,1920 --images 1000
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FSD = [sys.executable, "-m", "fsd.cli"]


def generate(out: Path, neurons: int, layers: int, images: int) -> float:
    """Seconds to generate the net (0 when it was already there)."""
    if (out / f"neuron{neurons}-l{layers}-categories.tsv").is_file():
        return 0.0
    t0 = time.perf_counter()
    args = ["generate", "--neurons", str(neurons), "--layers", str(layers)]
    subprocess.run([*FSD, *args, "--images", str(images), "--out", str(out)], check=True)
    return time.perf_counter() - t0


def _run(
    net: Path, workers: int, memory_mb: int, partitions: int | None, images: int
) -> dict[str, Any]:
    args = ["run", "--data", str(net), "--workers", str(workers), "--images", str(images)]
    if partitions is not None:
        args += ["--partitions", str(partitions)]
    command = ["/usr/bin/time", "-v", *FSD, *args, "--memory-mb", str(memory_mb), "--json"]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"fsd run failed ({done.returncode}): {done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    data["coordinator_rss_mb"] = int(found.group(1)) / 1024 if found else None
    return data


def _plan_only(net: Path, workers: int, method: str) -> dict[str, Any]:
    """min-comm (or another partitioner) alone on the net, in its own process: seconds and peak
    memory (the issue's planning-throughput target: 65536x1920 in under 10 minutes)."""
    code = (
        "import sys, time; from pathlib import Path; from fsd.model.source import open_source; "
        "from fsd.partition import make_plan; t = time.perf_counter(); "
        f"plan = make_plan(open_source(Path(sys.argv[1])), {workers}, {method!r}); "
        "print(time.perf_counter() - t, plan.total_volume)"
    )
    command = ["/usr/bin/time", "-v", sys.executable, "-c", code, str(net)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds, volume = done.stdout.split()
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return {
        "plan_only": method,
        "workers": workers,
        "seconds": round(float(seconds), 1),
        "planned_volume": int(volume),
        "rss_mb": int(found.group(1)) / 1024 if found else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--neurons", type=int, default=65536)
    parser.add_argument("--layers", default="120,480,1920")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--memory-mb", type=int, default=2048)
    parser.add_argument(
        "--partitions",
        default="",
        help="comma-separated P to force, one run each (default: the planner's choice)",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/fsd-scale"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    parser.add_argument(
        "--plan-only",
        metavar="PARTITIONER",
        help="only time this partitioner on each net (e.g. min-comm), no run",
    )
    args = parser.parse_args()
    if args.plan_only:
        for layers in (int(x) for x in args.layers.split(",")):
            net = args.cache / f"n{args.neurons}-l{layers}"
            generate(net, args.neurons, layers, args.images)
            row = _plan_only(net, args.workers, args.plan_only) | {"layers": layers}
            print(json.dumps(row), flush=True)
        return 0
    rows = []
    forced: list[int | None] = [int(p) for p in args.partitions.split(",") if p] or [None]
    for layers in (int(x) for x in args.layers.split(",")):
        net = args.cache / f"n{args.neurons}-l{layers}"
        generated = generate(net, args.neurons, layers, args.images)
        for partitions in forced:
            data = _run(net, args.workers, args.memory_mb, partitions, args.images)
            row = {
                "layers": layers,
                "forced_partitions": partitions,
                "predicted_s": data["parallelism"]["predicted_s"],
                "generate_s": round(generated, 1),
                "correct": data["correct"],
                "seconds": data["seconds"],
                "plan_s": data["plan_seconds"],
                "load_s": data["load_seconds"],
                "edges_per_second": data["edges_per_second"],
                "peak_rss_mb": data["peak_rss_mb"],
                "process_rss_mb": data["process_rss_mb"],
                "coordinator_rss_mb": data["coordinator_rss_mb"],
                "bytes_sent": data["bytes_sent"],
                "parallelism": data["parallelism"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| layers | R x P, window | seconds | time model s | G edges/s | planning + cutting s "
        "| other loading s | peak MB (any process) | bytes moved |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        par = r["parallelism"]
        print(
            f"| {r['layers']} | {par['replicas']} x {par['partitions']}, {par['window']} | "
            f"{r['seconds']:.1f} | {r['predicted_s']:.1f} | {r['edges_per_second'] / 1e9:.2f} | "
            f"{r['plan_s']:.0f} | {r['load_s']:.0f} | {r['peak_rss_mb']:.0f} | "
            f"{r['bytes_sent']:,} |"
        )
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
