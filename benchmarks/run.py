"""Side-by-side benchmark on the shared Graph Challenge net (2000 images), as ratios to baselines.

fsd with 1 and 2 workers (local channel) against the naive scipy oracle and SuiteSparse:GraphBLAS
(a 2019 Graph Challenge champion's library) on 1 and 2 threads, then fsd on each channel (local,
nats, s3, sqs, sns; one embedded server each for the whole benchmark: nats-server, SeaweedFS, and
one moto_server for sqs and another for sns) with 2, 4 and 8 workers, min-comm. Each baseline
timing is the best of ``--repeat`` runs, each channel row the best of ``--channel-repeat``;
loading and planning are excluded everywhere, as in the challenge. Each channel row also carries
what FSD-Inference's two schemes would bill for the same traffic (benchmarks/fsd_inference.py).
Ends with markdown tables for docs/benchmarks.md; exits 1 if any row is wrong.

    .venv/bin/python benchmarks/run.py [--data ../shared/graphchallenge] [--repeat 3]
        [--channel-repeat 3] [--channels local,nats,s3,sqs,sns] [--only-channels]
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

import fsd_inference
from fsd import reference
from fsd.channels import CHANNELS, ChannelConfig
from fsd.coordinator import Prepared, RunConfig, serve
from fsd.cost import declared_prices
from fsd.metrics import RunResult
from fsd.model import Images, Network, load_images, load_network
from fsd.partition import PARTITIONERS, Plan, make_plan
from fsd.run import Choice, Job, Loaded, Local, infer, load, plan, prepare

ROOT = Path(__file__).resolve().parents[1]
CHANNEL_WORKERS = (2, 4, 8)
CHANNEL_PARTITION = "min-comm"
CLOUD = ("nats", "s3", "sqs", "sns")  # the channels with a cloud bill, in table order
GB2 = "graphblas 2 thread(s)"


def _best(fn: Callable[[], np.ndarray], repeat: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), np.empty(0)
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _planned(job: Job) -> tuple[Loaded, Choice, Prepared]:
    """The pipeline's steps up to a prepared model (fsd.run), reused by every run of a row."""
    loaded = load(job)
    choice = plan(job, loaded)
    return loaded, choice, prepare(job, loaded, choice)


def _best_infer(job: Job, planned: tuple[Loaded, Choice, Prepared], repeat: int) -> RunResult:
    """The fastest of ``repeat`` inferences of the job (fsd.run.infer) on one prepared model."""
    loaded, choice, prepared = planned
    best = infer(job, loaded, choice, prepared)
    for _ in range(repeat - 1):
        result = infer(job, loaded, choice, prepared)
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
    """One configuration per channel, each on the embedded server its transport starts itself
    (fsd.coordinator.serve; sqs and sns one moto_server each, so neither queues behind the
    other's requests), stopped by stack; local keeps a fresh mailbox folder per run."""
    configs: dict[str, ChannelConfig] = {}
    for kind in kinds:
        if kind == "local":
            configs[kind] = ChannelConfig("local")
        else:
            config = RunConfig(channel=kind, channel_config=ChannelConfig(kind))
            configs[kind] = stack.enter_context(serve(config))
    return configs


def active_inputs(network: Network, images: sp.csr_matrix) -> list[np.ndarray]:
    """Per layer, which of its input neurons are non-zero for some image (the oracle's rule)."""
    masks = []
    y = sp.csr_matrix(images, dtype=np.float64)
    for w in network.layers:
        mask = np.zeros(w.shape[0], dtype=bool)
        mask[y.indices] = True
        masks.append(mask)
        y = reference.infer(Network(layers=[w], bias=network.bias, ymax=network.ymax), y)
    return masks


def traffic(
    plan: Plan, active: list[np.ndarray], payload: int, comm: np.ndarray
) -> tuple[fsd_inference.Traffic, list[float]]:
    """The run's messages split as FSD-Inference would send them, and each receiving slot's wait.

    fsd sends every planned (sender, receiver) pair a message each layer, empty when none of the
    neurons the receiver needs is active; FSD-Inference sends only the non-empty ones and flags
    the rest (a DynamoDB item or an empty S3 object). ``comm`` is the run's seconds per worker
    and layer spent communicating (:attr:`RunResult.worker_comm`).
    """
    messages = flags = 0
    sending: set[tuple[int, int]] = set()
    receiving: set[tuple[int, int]] = set()
    expecting: set[tuple[int, int]] = set()
    for k, layer in enumerate(plan.layers):
        for (src, dst), needed in layer.pairs.items():
            expecting.add((dst, k))
            if active[k][needed].any():
                messages += 1
                sending.add((src, k))
                receiving.add((dst, k))
            else:
                flags += 1
    counts = fsd_inference.Traffic(
        workers=plan.workers,
        layers=plan.depth,
        messages=messages,
        flags=flags,
        bytes=payload,
        sending_slots=len(sending),
        receiving_slots=len(receiving),
        expecting_slots=len(expecting),
    )
    waits = [float(comm[dst, k]) for dst, k in sorted(expecting)] if comm.size else []
    return counts, waits


def fsd_inference_bills(
    result: RunResult, plan: Plan, active: list[np.ndarray], memory_mb: int
) -> dict[str, Any]:
    """Both FSD-Inference schemes' bills for this run's traffic, at its Lambda usage."""
    counts, waits = traffic(plan, active, result.activation_bytes, result.worker_comm)
    planned = counts.messages + counts.flags
    if planned != result.messages - 2 * result.workers:  # inputs and results: 2 per worker
        print(f"  note: plan has {planned} messages, the run sent {result.messages}", flush=True)
    if len(waits) != counts.expecting_slots:  # no per-layer times: assume no waiting
        waits = [0.0] * counts.expecting_slots
    breakdown = result.cost.breakdown if result.cost is not None else {}
    gb_seconds = breakdown.get("lambda_gb_second", 0.0) / declared_prices().rate("lambda_gb_second")
    invocations = result.workers + 1
    objects = fsd_inference.object_scheme(counts, waits, invocations, gb_seconds, memory_mb)
    return {
        "traffic": dict(vars(counts)),
        "wait_seconds": round(sum(waits), 4),  # the object scheme's waits, summed
        **queue_bills(counts, invocations, gb_seconds),
        "object": objects.to_json(),
    }


def queue_bills(
    counts: fsd_inference.Traffic, invocations: int, gb_seconds: float
) -> dict[str, Any]:
    """The queue scheme at its fewest polls, and at the messages per poll FSD-Inference measured."""
    measured = fsd_inference.MEASURED_MESSAGES_PER_POLL
    return {
        "queue": fsd_inference.queue_scheme(counts, invocations, gb_seconds).to_json(),
        "queue_measured_polls": fsd_inference.queue_scheme(
            counts, invocations, gb_seconds, messages_per_poll=measured
        ).to_json(),
    }


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


def _cloud_markdown(rows: list[dict[str, Any]]) -> str:
    """The cloud channels against FSD-Inference's schemes for the same traffic, in USD per run."""
    lines = [
        "| channel | workers | seconds | requests | bytes | fsd cost USD "
        "| FSD-Inf queue USD (published model) | FSD-Inf object USD |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ordered = sorted(
        (r for r in rows if r.get("channel") in CLOUD),
        key=lambda r: (CLOUD.index(r["channel"]), r["workers"]),
    )
    for r in ordered:
        kind = r["channel"] if r["correct"] else f"{r['channel']} (WRONG)"
        if r["seconds"] is None:
            lines.append(f"| {kind} | {r['workers']} | failed: {r.get('error', '')} |||||")
            continue
        bills = r["fsd_inference"]
        queue, objects = bills["queue"], bills["object"]
        cells = [
            kind,
            str(r["workers"]),
            f"{r['seconds']:.3f}",
            f"{r['requests']:,}",
            f"{r['bytes']:,}",
            f"{r['cost_usd']:.3g}",
            f"{queue['total_usd']:.3g} ({queue['published_model_usd']:.3g})",
            f"{objects['total_usd']:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "graphchallenge")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json")
    parser.add_argument(
        "--channel-repeat", type=int, default=3, help="runs per channel row (the best is kept)"
    )
    parser.add_argument(
        "--channels",
        default="local,nats,s3,sqs,sns",
        help="comma list of channels for the channel rows",
    )
    parser.add_argument(
        "--channel-workers",
        default=",".join(map(str, CHANNEL_WORKERS)),
        help="comma list of worker counts for the channel rows",
    )
    parser.add_argument(
        "--only-channels", action="store_true", help="skip the baselines: channel rows only"
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.channels.split(",") if k.strip()]
    try:
        channel_workers = [int(w) for w in args.channel_workers.split(",") if w.strip()]
    except ValueError:
        print(f"--channel-workers: not a list of integers: {args.channel_workers}", file=sys.stderr)
        return 2
    if not channel_workers or min(channel_workers) < 1:
        print("--channel-workers needs worker counts >= 1", file=sys.stderr)
        return 2
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

    def record(
        name: str,
        seconds: float,
        cats: np.ndarray,
        expected: np.ndarray | None = None,
        **extra: Any,
    ) -> None:
        ok = bool(np.array_equal(cats, truth if expected is None else expected))
        seconds = round(seconds, 4)  # printed as stored, so the lines match the table
        rows.append({"name": name, "seconds": seconds, "correct": ok, **extra})
        print(f"{name:<34} {seconds:8.3f} s  correct={ok}", flush=True)

    prepared_by: dict[tuple[int, str], tuple[Loaded, Choice, Prepared]] = {}
    baselines: tuple[tuple[int, tuple[str, ...]], ...] = (
        () if args.only_channels else ((1, ("contiguous",)), (2, ("contiguous", "min-comm")))
    )
    if not args.only_channels:
        secs, cats = _best(lambda: reference.categories(reference.infer(network, images.matrix)), 1)
        record("scipy oracle (serial, float64)", secs, cats)
        for threads in (1, 2):
            secs, cats = _best(graphblas_runner(network, images.matrix, threads), args.repeat)
            record(f"graphblas {threads} thread(s)", secs, cats)
    for workers, partitions in baselines:
        for partition in partitions:
            # every worker a partition: one model-parallel group, as the row says
            config = RunConfig(workers, partition=partition)
            job = Job(Local(network, images), config, partitions=workers)
            prepared_by[workers, partition] = _planned(job)
            best = _best_infer(job, prepared_by[workers, partition], args.repeat)
            record(
                f"fsd {workers} worker(s), {partition}",
                best.seconds,
                best.categories,
                comm_share=round(best.comm_share, 3),
                bytes=best.bytes_sent,
                messages=best.messages,
            )

    # the planner's choice against one worker (issue 12): the model fits one worker, so two
    # workers are two replicas splitting the images; 8000 images (the 2000, four times over)
    if not args.only_channels:
        many = sp.vstack([images.matrix] * 4).tocsr()
        expected = np.concatenate([truth + k * images.matrix.shape[0] for k in range(4)])
        for workers in (1, 2):
            job = Job(Local(network, Images(many)), RunConfig(workers))
            planned = _planned(job)
            assert planned[1].planned is not None  # a local model is always planned
            best = _best_infer(job, planned, args.repeat)
            predicted = planned[1].planned.predicted_s
            print(f"  planner's time model: {predicted:.3f} s predicted", flush=True)
            record(
                f"fsd {workers} worker(s), planner, 8000 images",
                best.seconds,
                best.categories,
                expected,
                predicted_seconds=round(predicted, 4),
                parallelism=dict(best.parallelism),
                comm_share=round(best.comm_share, 3),
                bytes=best.bytes_sent,
                messages=best.messages,
            )

    # channels side by side: one server per channel, one Prepared per worker count
    active = active_inputs(network, images.matrix)
    memory_mb = RunConfig().memory_mb
    with contextlib.ExitStack() as stack:
        try:
            configs = _channel_configs(kinds, stack)
        except Exception as exc:  # a server that will not start fails its rows, not the script
            print(f"could not start channel servers: {type(exc).__name__}: {exc}", flush=True)
            configs = {}
        for workers in channel_workers:
            key = (workers, CHANNEL_PARTITION)
            plan_config = RunConfig(workers, partition=CHANNEL_PARTITION)
            # every worker a partition: one model-parallel group
            plan_job = Job(Local(network, images), plan_config, partitions=workers)
            if key not in prepared_by:
                prepared_by[key] = _planned(plan_job)
            cut = make_plan(network, workers, CHANNEL_PARTITION, plan_job.config.seed)
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
                    job = Job(plan_job.model, config, partitions=workers)
                    best = _best_infer(job, prepared_by[key], args.channel_repeat)
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
                    # contract: a run's billed requests are its cost's request counts
                    requests=None if cost is None else sum(cost.requests.values()),
                    ops=dict(best.ops),
                    cost_usd=None if cost is None else cost.total_usd,
                    cost=None if cost is None else cost.to_json(),
                    fsd_inference=fsd_inference_bills(best, cut, active, memory_mb),
                )

    plans = {m: make_plan(network, 8, m).total_volume for m in PARTITIONERS}
    print(f"planned crossing activations, 8 workers: {plans}")
    by = {r["name"]: r["seconds"] for r in rows if r["seconds"] is not None}
    ratios: dict[str, float] = {}
    if GB2 in by:
        ratios["fsd1/graphblas1"] = by["fsd 1 worker(s), contiguous"] / by["graphblas 1 thread(s)"]
        ratios["fsd2/graphblas2"] = (
            min(by["fsd 2 worker(s), contiguous"], by["fsd 2 worker(s), min-comm"]) / by[GB2]
        )
        one = by.get("fsd 1 worker(s), planner, 8000 images")
        two = by.get("fsd 2 worker(s), planner, 8000 images")
        if one and two:
            ratios["planner 1 worker / 2 workers (target >= 1.6)"] = one / two
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
    cloud = _cloud_markdown(rows)
    print()
    print(table)
    print()
    print(cloud)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": rows,
        "ratios": ratios,
        "nats2_comm_share": nats2_comm,
        "plans_8": plans,
        "channels": kinds,
        "table": table,
        "cloud_table": cloud,
    }
    args.out.write_text(json.dumps(report, indent=2))
    return 0 if all(r["correct"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
