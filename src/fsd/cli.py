"""``fsd`` command line: run, generate, partition. Bad input: one line on stderr and exit code 2.

Every message is one printable line with URL credentials scrubbed; even an unexpected exception
is one line (exit 1), its traceback shown only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import traceback
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
from fsd.model.network import MAX_IMAGES, MAX_LAYERS, MAX_NEURONS
from fsd.model.tsv import output_folder
from fsd.partition import PARTITIONERS, check_workers, make_plan
from fsd.redact import redact_text

log = logging.getLogger("fsd")

EXIT_WRONG = 1
EXIT_USAGE = 2
DEFAULT_NEURONS, DEFAULT_LAYERS, DEFAULT_IMAGES = 1024, 120, 2000
#: Bounds of numeric flags (sizes: see fsd.model.network); seeds are 32 bits.
MAX_SEED = 2**32 - 1
MAX_TIMEOUT = 86400.0


def _line(text: object) -> str:
    """``text`` as one printable line: URL userinfo scrubbed, line breaks turned into spaces,
    bytes of non-UTF-8 paths (surrogate escapes) shown as ``\\xNN``, other controls escaped."""
    out = []
    for ch in redact_text(str(text)):
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append(" ")
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out).strip()


def _say(kind: str, message: object) -> None:
    print(f"fsd: {kind}: {_line(message)}", file=sys.stderr)


def _traceback(verbose: bool) -> None:
    """With -v, the traceback of the exception being handled (URL credentials scrubbed)."""
    if verbose:
        sys.stderr.write(redact_text(traceback.format_exc()))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage dump
        self.exit(EXIT_USAGE, f"fsd: error: {_line(message)} (see {self.prog} --help)\n")


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # also more than 4300 digits
            raise argparse.ArgumentTypeError(f"not an integer: {text[:40]!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


_neurons = _workers = _count(1, MAX_NEURONS)
_layers = _count(1, MAX_LAYERS)
_images = _count(1, MAX_IMAGES)
_seed = _count(0, MAX_SEED)


def _seconds(text: str) -> float:
    """An argparse type: a finite duration in (0, MAX_TIMEOUT] seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text[:40]!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT):
        raise argparse.ArgumentTypeError(f"must be > 0 and <= {MAX_TIMEOUT:g} seconds, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="fsd", description=__doc__)
    top.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="distributed inference, checked against truth or the oracle")
    run.add_argument("--data", type=Path, help="Graph Challenge folder (official layout)")
    run.add_argument("--neurons", type=_neurons, help="neurons per layer (N)")
    run.add_argument("--layers", type=_layers, help="layers to run (default: all)")
    run.add_argument("--images", type=_images, help="use the first K images")
    run.add_argument("--workers", type=_workers, default=4, help="workers (1..N, default 4)")
    run.add_argument("--channel", default="local", help=f"one of {', '.join(CHANNELS)}")
    run.add_argument("--partition", default="contiguous", help=", ".join(PARTITIONERS))
    run.add_argument("--dtype", default="float32", help=", ".join(DTYPES))
    run.add_argument("--seed", type=_seed, default=0, help="seed of generator and partitioner")
    run.add_argument("--timeout", type=_seconds, default=600.0, help="seconds for the inference")
    run.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    run.add_argument("--nats-url", help="NATS server URL (env FSD_NATS_URL; none: embedded)")
    run.add_argument("--s3-endpoint", help="S3 endpoint URL (env FSD_S3_ENDPOINT; none: embedded)")
    run.add_argument("--s3-bucket", help="S3 bucket (env FSD_S3_BUCKET; default fsd)")
    run.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write a per-worker timeline PNG of the run"
    )

    gen = sub.add_parser("generate", help="write a RadiX-Net network and images (official layout)")
    gen.add_argument("--neurons", type=_neurons, required=True)
    gen.add_argument("--layers", type=_layers, required=True)
    gen.add_argument("--images", type=_images, required=True)
    gen.add_argument("--seed", type=_seed, default=0)
    gen.add_argument("--out", type=Path, required=True)

    part = sub.add_parser("partition", help="planned crossing activations per partitioner")
    part.add_argument("--data", type=Path, required=True)
    part.add_argument("--workers", type=_workers, required=True)
    part.add_argument("--neurons", type=_neurons)
    part.add_argument("--layers", type=_layers)
    part.add_argument("--seed", type=_seed, default=0)
    part.add_argument("--json", action="store_true")

    model = sub.add_parser("model", help="the model store (an S3 bucket) used by the functions")
    verbs = model.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    push = verbs.add_parser("push", help="cut a model for worker counts and upload it")
    push.add_argument("data", type=Path, help="Graph Challenge folder (official layout)")
    push.add_argument("--name", required=True, help="model name for requests")
    push.add_argument("--workers", type=_workers, nargs="+", required=True, help="worker counts")
    push.add_argument("--partition", nargs="+", default=["min-comm"], help=", ".join(PARTITIONERS))
    push.add_argument("--neurons", type=_neurons)
    push.add_argument("--layers", type=_layers)
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
    network = load_network(args.data, args.neurons, args.layers, dtype=args.dtype)
    return network, load_images(args.data, network.neurons, args.images, args.dtype)


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
    if args.dtype not in DTYPES:  # before loading: weights are checked in this dtype
        raise InputError(f"unknown dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if args.plot is not None:  # fail before a long run, not after it
        plot.check_available()
        plot.check_path(args.plot)
    settings = channel_config(  # addresses checked before any loading or connecting
        args.channel, nats_url=args.nats_url, s3_endpoint=args.s3_endpoint, s3_bucket=args.s3_bucket
    )
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
        channel_config=settings,
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
    from fsd.model.generate import check_sizes, generate  # noqa: PLC0415

    check_sizes(args.neurons, args.layers, args.images, args.seed)
    output_folder(args.out)  # an impossible place fails now, not after generating
    network, images = generate(args.neurons, args.layers, args.images, args.seed)
    write_network(args.out, network)
    write_images(args.out, images)
    alive = len(images.truth[args.layers])
    print(
        f"wrote {_line(args.out)}: {args.neurons} neurons x {args.layers} layers, "
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
    """Run one command; every failure is one line on stderr and an exit code (see README)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with lifetime.exit_on_sigterm():  # SIGTERM: unwind (stop workers, servers), exit 143
            return COMMANDS[args.command](args)
    except InputError as exc:
        _say("error", exc)
        return EXIT_USAGE
    except FsdError as exc:
        _say("failed", exc)
        return EXIT_WRONG
    except KeyboardInterrupt:
        print("fsd: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        _traceback(args.verbose)
        _say("failed", "out of memory (try fewer images, layers or neurons, or more workers)")
        return EXIT_WRONG
    except OSError as exc:  # a file or folder the user named that the code did not wrap
        _traceback(args.verbose)
        if exc.filename is not None:
            _say("error", f"{exc.filename}: {exc.strerror or exc}")
            return EXIT_USAGE
        _say("failed", exc)
        return EXIT_WRONG
    except Exception as exc:  # a bug: one line, the traceback only on request
        _traceback(args.verbose)
        _say(
            "internal error",
            f"{type(exc).__name__}: {exc} (a bug; run fsd -v ... for the traceback)",
        )
        return EXIT_WRONG


if __name__ == "__main__":
    sys.exit(main())
