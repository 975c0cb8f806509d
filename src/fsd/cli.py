"""``fsd`` command line: run, generate, partition. Bad input: one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fsd import lifetime, observe, plot, reference
from fsd.channels import CHANNELS
from fsd.channels.settings import channel_config
from fsd.coordinator import DTYPES, RunConfig, infer, prepare
from fsd.errors import FsdError, InputError
from fsd.metrics import RunResult
from fsd.model import Images, Network, load_images, load_network, write_images, write_network
from fsd.partition import PARTITIONERS, check_workers, make_plan

log = logging.getLogger("fsd")

EXIT_WRONG = 1
EXIT_USAGE = 2
DEFAULT_NEURONS, DEFAULT_LAYERS, DEFAULT_IMAGES = 1024, 120, 2000


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage dump
        self.exit(EXIT_USAGE, f"fsd: error: {message} (see fsd {self.prog.split()[-1]} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="fsd", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="distributed inference, checked against truth or the oracle")
    run.add_argument("--data", type=Path, help="Graph Challenge folder (official layout)")
    run.add_argument("--neurons", type=_positive, help="neurons per layer (N)")
    run.add_argument("--layers", type=_positive, help="layers to run (default: all)")
    run.add_argument("--images", type=_positive, help="use the first K images")
    run.add_argument("--workers", type=int, default=4, help="workers (1..N, default 4)")
    run.add_argument("--channel", default="local", help=f"one of {', '.join(CHANNELS)}")
    run.add_argument("--partition", default="contiguous", help=", ".join(PARTITIONERS))
    run.add_argument("--dtype", default="float32", help=", ".join(DTYPES))
    run.add_argument("--seed", type=int, default=0, help="seed of generator and partitioner")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds for the inference")
    run.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    run.add_argument("--nats-url", help="NATS server URL (env FSD_NATS_URL; none: embedded)")
    run.add_argument("--s3-endpoint", help="S3 endpoint URL (env FSD_S3_ENDPOINT; none: embedded)")
    run.add_argument("--s3-bucket", help="S3 bucket (env FSD_S3_BUCKET; default fsd)")
    run.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write a per-worker timeline PNG of the run"
    )

    gen = sub.add_parser("generate", help="write a RadiX-Net network and images (official layout)")
    gen.add_argument("--neurons", type=_positive, required=True)
    gen.add_argument("--layers", type=_positive, required=True)
    gen.add_argument("--images", type=_positive, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", type=Path, required=True)

    part = sub.add_parser("partition", help="planned crossing activations per partitioner")
    part.add_argument("--data", type=Path, required=True)
    part.add_argument("--workers", type=int, required=True)
    part.add_argument("--neurons", type=_positive)
    part.add_argument("--layers", type=_positive)
    part.add_argument("--seed", type=int, default=0)
    part.add_argument("--json", action="store_true")

    model = sub.add_parser("model", help="the model store (an S3 bucket) used by the functions")
    verbs = model.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    push = verbs.add_parser("push", help="cut a model for worker counts and upload it")
    push.add_argument("data", type=Path, help="Graph Challenge folder (official layout)")
    push.add_argument("--name", required=True, help="model name for requests")
    push.add_argument("--workers", type=int, nargs="+", required=True, help="worker counts")
    push.add_argument("--partition", nargs="+", default=["min-comm"], help=", ".join(PARTITIONERS))
    push.add_argument("--neurons", type=_positive)
    push.add_argument("--layers", type=_positive)
    push.add_argument("--no-images", action="store_true", help="do not store the images")
    push.add_argument("--s3-endpoint", help="S3 endpoint URL (env FSD_S3_ENDPOINT)")
    push.add_argument("--s3-bucket", help="bucket (env FSD_S3_BUCKET; default fsd)")
    show = verbs.add_parser("show", help="print a stored model's manifest")
    show.add_argument("name")
    show.add_argument("--s3-endpoint", help="S3 endpoint URL (env FSD_S3_ENDPOINT)")
    show.add_argument("--s3-bucket", help="bucket (env FSD_S3_BUCKET; default fsd)")
    return top


def _embedded(neurons: int, layers: int, images: int, seed: int) -> tuple[Network, Images]:
    from fsd.model.generate import radix_net, synthetic_images  # noqa: PLC0415

    return radix_net(neurons, layers, seed), synthetic_images(neurons, images, seed)


def _load(args: argparse.Namespace) -> tuple[Network, Images]:
    if args.data is None:
        return _embedded(
            args.neurons or DEFAULT_NEURONS,
            args.layers or DEFAULT_LAYERS,
            args.images or DEFAULT_IMAGES,
            args.seed,
        )
    network = load_network(args.data, args.neurons, args.layers)
    return network, load_images(args.data, network.neurons, args.images)


def _check(result: RunResult, network: Network, images: Images) -> None:
    """Against the official truth when there is one for this depth, else against the oracle."""
    truth = images.truth.get(network.depth)
    if truth is not None:
        result.checked_against = "truth"
        result.correct = bool(np.array_equal(result.categories, truth))
        return
    final = reference.infer(network, images.matrix)
    expected = reference.categories(final)
    result.checked_against = "oracle"
    result.correct = bool(np.array_equal(result.categories, expected)) and bool(
        np.allclose(result.row_sums, reference.row_sums(final)[expected - 1], rtol=1e-3, atol=1e-3)
    )


class _Bar:
    """A progress bar over layers on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, layer: int) -> None:
        done = max(layer, 0)
        if self.tty:
            fill = int(30 * done / self.total)
            sys.stderr.write(f"\rlayers [{'#' * fill}{'.' * (30 - fill)}] {done}/{self.total}")
            sys.stderr.flush()
        elif (step := 10 * done // self.total) > self.shown:
            self.shown = step
            sys.stderr.write(f"layers {done}/{self.total}\n")

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _cmd_run(args: argparse.Namespace) -> int:
    if args.channel not in CHANNELS:
        raise InputError(f"unknown channel {args.channel!r}; choose one of {', '.join(CHANNELS)}")
    if args.partition not in PARTITIONERS:
        raise InputError(
            f"unknown partitioner {args.partition!r}; choose one of {', '.join(PARTITIONERS)}"
        )
    if args.plot is not None:  # fail before a long run, not after it
        plot.check_available()
        plot.check_path(args.plot)
    t0 = time.perf_counter()
    network, images = _load(args)
    check_workers(args.workers, network.neurons)
    config = RunConfig(
        workers=args.workers,
        channel=args.channel,
        partition=args.partition,
        dtype=args.dtype,
        seed=args.seed,
        timeout=args.timeout,
        channel_config=channel_config(
            args.channel,
            nats_url=args.nats_url,
            s3_endpoint=args.s3_endpoint,
            s3_bucket=args.s3_bucket,
        ),
    )
    prepared = prepare(network, config)
    load_seconds = time.perf_counter() - t0 - prepared.plan_seconds
    bar = None if args.json else _Bar(network.depth)
    try:
        result = infer(prepared, images.matrix, config, bar)
    finally:
        if bar is not None:
            bar.close()
    result.load_seconds = load_seconds
    _check(result, network, images)
    model = args.data.resolve().name if args.data is not None else "generated"
    gateway = os.environ.get("FSD_PUSHGATEWAY")
    if gateway:  # best effort: push_run logs a warning instead of failing the run
        observe.push_run(result, model, gateway)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.summary())
    if args.plot is not None:  # after the report, so a failing plot does not hide the result
        plot.timeline(result, args.plot, model)
    return 0 if result.correct else EXIT_WRONG


def _cmd_generate(args: argparse.Namespace) -> int:
    from fsd.model.generate import generate  # noqa: PLC0415

    network, images = generate(args.neurons, args.layers, args.images, args.seed)
    write_network(args.out, network)
    write_images(args.out, images)
    alive = len(images.truth[args.layers])
    print(
        f"wrote {args.out}: {args.neurons} neurons x {args.layers} layers, "
        f"{args.images} images ({alive} alive after {args.layers} layers)"
    )
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    network = load_network(args.data, args.neurons, args.layers)
    check_workers(args.workers, network.neurons)
    report: dict[str, dict[str, Any]] = {}
    for method in PARTITIONERS:
        t0 = time.perf_counter()
        plan = make_plan(network, args.workers, method, args.seed)
        report[method] = {
            "total": plan.total_volume,
            "cut_edges": plan.total_cut_edges,
            "seconds": round(time.perf_counter() - t0, 3),
            "per_layer": [t.volume for t in plan.layers],
        }
    if args.json:
        print(json.dumps({"workers": args.workers, "neurons": network.neurons,
                          "layers": network.depth, "partitioners": report}))  # fmt: skip
        return 0
    print(
        f"{network.name}, {args.workers} workers: activations crossing workers per image "
        "(each needed neuron counted once per receiving worker)"
    )
    print(f"{'layer':>6} " + " ".join(f"{m:>12}" for m in PARTITIONERS))
    for k in range(network.depth):
        print(f"{k + 1:>6} " + " ".join(f"{report[m]['per_layer'][k]:>12}" for m in PARTITIONERS))
    print(f"{'total':>6} " + " ".join(f"{report[m]['total']:>12}" for m in PARTITIONERS))
    print(f"{'cut':>6} " + " ".join(f"{report[m]['cut_edges']:>12}" for m in PARTITIONERS))
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    from dataclasses import asdict  # noqa: PLC0415

    from fsd.store import ModelStore  # noqa: PLC0415

    store = ModelStore(channel_config("s3", s3_endpoint=args.s3_endpoint, s3_bucket=args.s3_bucket))
    if args.verb == "show":
        print(json.dumps(asdict(store.manifest(args.name)), indent=2))
        return 0
    for method in args.partition:
        if method not in PARTITIONERS:
            raise InputError(
                f"unknown partitioner {method!r}; choose one of {', '.join(PARTITIONERS)}"
            )
    network = load_network(args.data, args.neurons, args.layers)
    for w in args.workers:
        check_workers(w, network.neurons)
    images = None if args.no_images else load_images(args.data, network.neurons)
    manifest = store.push(network, args.name, args.workers, args.partition, images)
    cuts = ", ".join(sorted(manifest.partitions))
    print(f"pushed {args.name}: {network.neurons} x {network.depth}, cut for {cuts}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "generate": _cmd_generate,
    "partition": _cmd_partition,
    "model": _cmd_model,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with lifetime.exit_on_sigterm():  # SIGTERM: unwind (stop workers, servers), exit 143
            return COMMANDS[args.command](args)
    except InputError as exc:
        print(f"fsd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FsdError as exc:
        print(f"fsd: failed: {exc}", file=sys.stderr)
        return EXIT_WRONG
    except KeyboardInterrupt:
        print("fsd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
