"""Side-by-side benchmark on the shared Graph Challenge net (2000 images), as ratios to baselines.

fsd with 1 and 2 workers (local channel) against the naive scipy oracle and SuiteSparse:GraphBLAS
(a 2019 Graph Challenge champion's library) on 1 and 2 threads, then fsd on each channel (local,
nats, s3; one embedded server each for the whole benchmark) with 2 and 4 workers, min-comm. Each
timing is the best of ``--repeat`` runs; loading and planning are excluded everywhere, as in the
challenge. Ends with a markdown table for docs/benchmarks.md; exits 1 if any row is wrong.

    .venv/bin/python benchmarks/run.py [--data ../shared/graphchallenge] [--repeat 3]
        [--channels local,nats,s3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fsd import reference
from fsd.channels import CHANNELS, ChannelConfig
from fsd.coordinator import Prepared, RunConfig, infer, prepare
from fsd.metrics import RunResult
from fsd.model import Images, Network, load_images, load_network
from fsd.partition import PARTITIONERS, make_plan

ROOT = Path(__file__).resolve().parents[1]
CHANNEL_WORKERS = (2, 4)
CHANNEL_PARTITION = "min-comm"
#: Transport operations each channel is billed for (see fsd.cost); local has no transport bill.
BILLED_OPS: dict[str, tuple[str, ...]] = {
    "local": (),
    "nats": ("publish", "receive", "ack"),
    "s3": ("put", "get", "get_miss", "list"),
}
GB2 = "graphblas 2 thread(s)"


def _best(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.empty(0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _best_infer(
    prepared: Prepared, images: sp.csr_matrix, config: RunConfig, repeat: int
) -> RunResult:
    best = infer(prepared, images, config)
    for _ in range(repeat - 1):
        result = infer(prepared, images, config)
        if result.seconds < best.seconds:
            best = result
    return best


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


def _channel_configs(kinds: list[str], stack: contextlib.ExitStack) -> dict[str, ChannelConfig]:
    """One configuration per channel; nats and s3 each get one embedded server, stopped by stack."""
    configs: dict[str, ChannelConfig] = {}
    for kind in kinds:
        if kind == "local":
            configs[kind] = ChannelConfig("local")  # a fresh mailbox folder per run
        elif kind == "nats":
            from fsd.services import NatsServer

            nats = stack.enter_context(NatsServer())
            configs[kind] = ChannelConfig("nats", nats.url, token=nats.token)
        elif kind == "s3":
            from fsd.services import S3Server

            s3 = stack.enter_context(S3Server())
            configs[kind] = ChannelConfig(
                "s3",
                s3.endpoint,
                access_key=s3.access_key,
                secret_key=s3.secret_key,
                bucket=s3.bucket,
                region=s3.region,
            )
    return configs


def _requests(kind: str, ops: dict[str, int]) -> int:
    return sum(int(ops.get(op, 0)) for op in BILLED_OPS[kind])


def _markdown(rows: list[dict[str, Any]]) -> str:
    """The table for docs/benchmarks.md; '-' where a row has no such figure."""
    gb2 = next((r["seconds"] for r in rows if r["name"] == GB2 and r["seconds"]), None)

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        return "-" if value is None else format(value, fmt)

    lines = [
        "| run | seconds | ratio to graphblas-2 | comm share | bytes | messages | requests "
        "| cost USD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = r["name"] if r["correct"] else f"{r['name']} (WRONG)"
        ratio = "-" if gb2 is None or r["seconds"] is None else f"{r['seconds'] / gb2:.2f}x"
        cells = [
            name,
            cell(r, "seconds", ".3f"),
            ratio,
            cell(r, "comm_share", ".3f"),
            cell(r, "bytes", ","),
            cell(r, "messages", ","),
            cell(r, "requests", ","),
            cell(r, "cost_usd", ".3g"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument(
        "--channels", default="local,nats,s3", help="comma list of channels for the channel rows"
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.channels.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in CHANNELS]
    if unknown:
        print(f"unknown channel(s) {unknown}; choose from {', '.join(CHANNELS)}", file=sys.stderr)
        return 2
    if not (args.data / "neuron1024").is_dir():
        print(f"benchmark data not found at {args.data}", file=sys.stderr)
        return 2
    network = load_network(args.data)
    images: Images = load_images(args.data, 1024)
    truth = images.truth[120]
    rows: list[dict[str, Any]] = []

    def record(name: str, seconds: float, cats: np.ndarray, **extra: Any) -> None:
        ok = bool(np.array_equal(cats, truth))
        seconds = round(seconds, 4)  # printed as stored, so the lines match the table
        rows.append({"name": name, "seconds": seconds, "correct": ok, **extra})
        print(f"{name:<34} {seconds:8.3f} s  correct={ok}", flush=True)

    secs, cats = _best(lambda: reference.categories(reference.infer(network, images.matrix)), 1)
    record("scipy oracle (serial, float64)", secs, cats)
    for threads in (1, 2):
        secs, cats = _best(graphblas_runner(network, images.matrix, threads), args.repeat)
        record(f"graphblas {threads} thread(s)", secs, cats)
    prepared_by: dict[tuple[int, str], Prepared] = {}
    for workers, partitions in ((1, ("contiguous",)), (2, ("contiguous", "min-comm"))):
        for partition in partitions:
            config = RunConfig(workers=workers, partition=partition)
            prepared = prepared_by[workers, partition] = prepare(network, config)
            best = _best_infer(prepared, images.matrix, config, args.repeat)
            record(
                f"fsd {workers} worker(s), {partition}",
                best.seconds,
                best.categories,
                comm_share=round(best.comm_share, 3),
                bytes=best.bytes_sent,
                messages=best.messages,
            )

    # channels side by side: one server per channel, one Prepared per worker count
    with contextlib.ExitStack() as stack:
        try:
            configs = _channel_configs(kinds, stack)
        except Exception as exc:  # a server that will not start fails its rows, not the script
            print(f"could not start channel servers: {type(exc).__name__}: {exc}", flush=True)
            configs = {}
        for workers in CHANNEL_WORKERS:
            key = (workers, CHANNEL_PARTITION)
            if key not in prepared_by:
                plan_config = RunConfig(workers=workers, partition=CHANNEL_PARTITION)
                prepared_by[key] = prepare(network, plan_config)
            for kind in kinds:
                name = f"fsd {kind} {workers} workers, {CHANNEL_PARTITION}"
                info: dict[str, Any] = {"channel": kind, "workers": workers}
                try:
                    config = RunConfig(
                        workers=workers,
                        partition=CHANNEL_PARTITION,
                        channel=kind,
                        channel_config=configs[kind],
                    )
                    best = _best_infer(prepared_by[key], images.matrix, config, args.repeat)
                except Exception as exc:  # record the failure, keep benchmarking the rest
                    why = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                    rows.append({"name": name, "seconds": None, "correct": False, **info})
                    rows[-1]["error"] = why
                    print(f"{name:<34}   failed: {why}", flush=True)
                    continue
                cost = best.cost
                record(
                    name,
                    best.seconds,
                    best.categories,
                    **info,
                    comm_share=round(best.comm_share, 3),
                    bytes=best.bytes_sent,
                    messages=best.messages,
                    requests=_requests(kind, best.ops),
                    ops=dict(best.ops),
                    cost_usd=None if cost is None else cost.total_usd,
                    cost=None if cost is None else cost.to_json(),
                )

    plans = {m: make_plan(network, 8, m).total_volume for m in PARTITIONERS}
    print(f"planned crossing activations, 8 workers: {plans}")
    by = {r["name"]: r["seconds"] for r in rows if r["seconds"] is not None}
    ratios = {
        "fsd1/graphblas1": by["fsd 1 worker(s), contiguous"] / by["graphblas 1 thread(s)"],
        "fsd2/graphblas2": min(by["fsd 2 worker(s), contiguous"], by["fsd 2 worker(s), min-comm"])
        / by[GB2],
    }
    for kind, label in (("nats", "nats2"), ("s3", "s3_2")):
        seconds = by.get(f"fsd {kind} 2 workers, {CHANNEL_PARTITION}")
        if seconds is not None:
            ratios[f"{label}/graphblas2"] = seconds / by[GB2]
    for label, value in ratios.items():
        print(f"{label:<20} {value:.2f}x")
    nats2 = next((r for r in rows if r["name"] == f"fsd nats 2 workers, {CHANNEL_PARTITION}"), {})
    nats2_comm = nats2.get("comm_share")
    if nats2_comm is not None:
        print(f"{'nats2 comm share':<20} {nats2_comm:.3f}")
    table = _markdown(rows)
    print()
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": rows,
        "ratios": ratios,
        "nats2_comm_share": nats2_comm,
        "plans_8": plans,
        "channels": kinds,
        "table": table,
    }
    args.out.write_text(json.dumps(report, indent=2))
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
