"""``fsd`` command line: run, invoke, generate, partition, model.

Bad input: one line on stderr and exit code 2. Every message is one printable line with URL
credentials scrubbed; even an unexpected exception is one line (exit 1), its traceback shown
only with ``-v``.

Start-up loads only what the command given needs (tests and scripts start ``fsd`` hundreds of
times): its options are built, and its modules imported, only for that command; what every
backend declares (secrets' names, libraries' loggers) is looked up only when a message needs it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import fsd
from fsd import channels, lifetime, planner, settings
from fsd.channels import CHANNELS
from fsd.errors import FsdError, InputError
from fsd.redact import SecretFilter
from fsd.services import NotInstalled
from fsd.settings import Variable

if TYPE_CHECKING:
    from fsd.run import Job

log = logging.getLogger("fsd")

EXIT_WRONG = 1
EXIT_USAGE = 2
#: Bounds of numeric flags (sizes: see fsd.model.network); seeds are 32 bits.
MAX_SEED = 2**32 - 1
MAX_TIMEOUT = 86400.0


VARIABLES = (
    Variable(
        "FSD_CACHE_DIR",
        "where TSV models are cached in binary (an unusable cache is rebuilt)",
        default="~/.cache/fsd",
    ),
    Variable("FSD_PUSHGATEWAY", "fsd run: a Prometheus Pushgateway to push each run's metrics to"),
)
"""The CLI's own variables (besides the transports', the store's and ``fsd invoke``'s): read
here, in the command that uses them, and handed down as values."""


def _cache_dir() -> Path | None:
    """``FSD_CACHE_DIR`` (None: the default, :func:`fsd.model.tsv.default_cache_dir`)."""
    folder = settings.text(os.environ, "FSD_CACHE_DIR")
    return Path(folder) if folder else None


def _secret_values() -> list[str]:
    """The values of the secrets this process holds (:data:`fsd.variables.SECRET_NAMES` and
    ``fsd invoke``'s, :func:`fsd.invoke.variables`)."""
    from fsd import invoke  # noqa: PLC0415 (every backend: see _Scrubber)
    from fsd.variables import SECRET_NAMES  # noqa: PLC0415

    names = (*SECRET_NAMES, *(v.name for v in invoke.variables() if v.secret))
    return [settings.text(os.environ, name) for name in names]


class _Scrubber(SecretFilter):
    """What scrubs every message, traceback and log record: URL userinfo, credential headers
    and the values of the secrets this process holds (:func:`_secret_values`).

    Which variables are secrets is every backend's declaration, and reading it loads every
    backend's client library (a second at start-up): it is read only once a text holds the
    value of some variable at all, which a refused flag or an ordinary message does not. The
    text scrubbed is the same either way.
    """

    def __init__(self) -> None:
        super().__init__()  # no secrets until they are looked up
        self.looked_up = False
        self.values = SecretFilter(os.environ.values()).secrets  # those long enough to scrub

    def scrub(self, text: str) -> str:
        if not self.looked_up:
            redacted = super().scrub(text)  # userinfo and headers only, so far
            if not any(value in redacted for value in self.values):
                return redacted
            self.secrets = SecretFilter(_secret_values()).secrets
            self.looked_up = True
        return super().scrub(text)


def _scrubber() -> SecretFilter:
    """What scrubs every message, traceback and log record (:class:`_Scrubber`)."""
    return _Scrubber()


def _line(text: object) -> str:
    """``text`` as one printable line: credentials scrubbed, line breaks turned into spaces,
    bytes of non-UTF-8 paths (surrogate escapes) shown as ``\\xNN``, other controls escaped."""
    out = []
    for ch in _scrubber().scrub(str(text)):
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
    """With -v, the traceback of the exception being handled (credentials scrubbed)."""
    if verbose:
        sys.stderr.write(_scrubber().scrub(traceback.format_exc()))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage dump
        self.exit(EXIT_USAGE, f"fsd: error: {_line(message)} (see {self.prog} --help)\n")


def _decimal(text: str, **bounds: Any) -> float:
    """``text`` in the one grammar of every number setting (:func:`fsd.settings.decimal`: plain
    decimal digits; no sign, exponent, ``_``, hex, non-ASCII digit, NaN or infinity), within
    ``bounds``; argparse's message names the flag: ``argument --workers: must be ...``."""
    try:
        return settings.decimal(text, "", **bounds)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high``."""

    def parse(text: str) -> int:
        return int(_decimal(text, low=low, high=high, whole=True))

    return parse


_seed = _count(0, MAX_SEED)


class _Sizes:
    """The argparse types of a model's sizes, bounded as :mod:`fsd.model.network` bounds them:
    made with the command that takes them, as that module loads numpy and scipy."""

    def __init__(self) -> None:
        from fsd.model.network import MAX_LAYERS, MAX_LOADED_IMAGES, MAX_NEURONS  # noqa: PLC0415

        self.neurons = self.workers = _count(1, MAX_NEURONS)
        self.layers = _count(1, MAX_LAYERS)
        self.images = _count(1, MAX_LOADED_IMAGES)


def _memory(text: str) -> int:
    """MB per worker: a whole number in the one range of a budget (fsd.planner.MEMORY_RANGE)."""
    return int(_decimal(text, whole=True, **planner.MEMORY_RANGE))


def _seconds(text: str) -> float:
    """An argparse type: a duration in (0, MAX_TIMEOUT] seconds."""
    return _decimal(text, low=0.0, high=MAX_TIMEOUT, low_open=True)


DESCRIPTION = f"""\
Fully serverless distributed inference of sparse DNNs: a model partitioned by neurons across
workers that exchange activations through a channel ({", ".join(CHANNELS)}).

Exit codes: 0 correct, 1 wrong answer or failed run, 2 bad input (one line on stderr).
-v and --log-level go before or after the command.
"""


def _transport_examples() -> list[str]:
    """The ``fsd run`` lines the transports declare (``Channel.EXAMPLE``), in registry order."""
    declared = (channels.transport(kind).EXAMPLE for kind in channels.TRANSPORTS)
    return [example for example in declared if example]


def _run_epilog() -> str:
    return (
        """\
examples:
  fsd run                                          (a generated 1024x120 network, 4 workers)
  fsd run --data ../shared/graphchallenge --workers 8 --partition min-comm
"""
        + "".join(f"  {example}\n" for example in _transport_examples())
        + "\n"
        + channels.embedded_note()
    )


def _invoke_epilog() -> str:
    """The platform's: where its coordinators are."""
    from fsd import invoke  # noqa: PLC0415

    return invoke.client().EPILOG


class _Epilogs(Mapping[str, str]):
    """Each parser's examples; those the backends declare (loading them: every transport, the
    invoke client) are made when asked, so only the command given loads its own."""

    def __init__(self, texts: Mapping[str, str | Callable[[], str]]) -> None:
        self.texts = texts

    def __getitem__(self, name: str) -> str:
        text = self.texts[name]
        return text if isinstance(text, str) else text()

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __len__(self) -> int:
        return len(self.texts)


EPILOGS = _Epilogs(
    {
        "fsd": f"""\
examples:
  fsd run --workers 4 --channel {channels.REMOTE_CHANNELS[0]}
  fsd invoke --inference-model gc1024 --namespace default --request examples/request.json
  fsd generate --neurons 1024 --layers 120 --images 1000 --out /tmp/net1024
  fsd COMMAND --help    (a command's options and examples)
""",
        "run": _run_epilog,
        "invoke": _invoke_epilog,
        "generate": """\
examples:
  fsd generate --neurons 1024 --layers 120 --images 1000 --out /tmp/net1024
  fsd run --data /tmp/net1024 --workers 4
  fsd generate --neurons 1024 --layers 6 --images 100 --out /tmp/tsv1024 --format tsv

Layers are written one at a time (binary by default: neuron{N}/layers.json and one CSR file
per layer); the truth comes from a streamed float64 oracle.
""",
        "partition": """\
examples:
  fsd partition --data ../shared/graphchallenge --workers 8
  fsd partition --data DIR --workers 16 --layers 12 --json
""",
        "model": """\
examples:
  fsd model push ../shared/graphchallenge --name gc1024 --workers 4 8
  fsd model show gc1024
""",
        "push": """\
examples:
  fsd model push ../shared/graphchallenge --name gc1024 --workers 4 8
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 fsd model push DIR --name gc1024 --workers 4
""",
        "show": """\
examples:
  fsd model show gc1024
""",
    }
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ABOUT = {
    "run": "distributed inference, checked against truth or the oracle",
    "invoke": "send an inference request to a deployed coordinator function",
    "generate": "write a RadiX-Net network (layer by layer) and images",
    "partition": "planned crossing activations per partitioner",
    "model": "the model store (a bucket) used by the functions",
}
"""Each command's one-line summary (``fsd --help`` lists them), in the order shown."""


def _add_flags(parser: argparse.ArgumentParser, declared: Iterable[Variable]) -> None:
    """The flags a backend declares (its variables that have one: the flag wins over them)."""
    for var in declared:
        if var.flag:
            parser.add_argument(var.flag, help=var.flag_help or var.meaning)


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one to show (not for flags and unset options, whose help
    says what happens without them); descriptions and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        if isinstance(action.default, list):  # nargs="+": shown as typed
            return f"{action.help} (default: {' '.join(map(str, action.default))})"
        return super()._get_help_string(action)


def _version() -> str:
    try:
        return importlib.metadata.version("fsd")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return fsd.__version__


def _common() -> _Parser:
    """-v and --log-level, accepted before and after the command: SUPPRESS keeps a command's
    parser from resetting what was given before it."""
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="log fsd's progress details (DEBUG; libraries' at WARNING: --log-level DEBUG "
        "shows theirs too) and show tracebacks of internal errors",
    )
    common.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="log messages of this level and above (default: WARNING; DEBUG with -v)",
    )
    return common


def _command(
    group: argparse._SubParsersAction[_Parser], name: str, about: str
) -> argparse.ArgumentParser:
    return group.add_parser(
        name,
        help=about,
        description=about[0].upper() + about[1:] + ".",
        epilog=EPILOGS[name],
        formatter_class=_Help,
        parents=[_common()],
    )


def _parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """``fsd``'s parser; given ``commands``, only their options and examples are built, the
    others listed by their summary alone (all ``fsd --help`` shows of them): a command's choices
    and flags come from the modules that define them, and :func:`main` loads only the one given."""
    built = set(ABOUT if commands is None else commands)
    top = _Parser(
        prog="fsd",
        description=DESCRIPTION,
        epilog=EPILOGS["fsd"],
        formatter_class=_Help,
        parents=[_common()],
    )
    top.add_argument("--version", action="version", version=f"fsd {_version()}")
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for name, about in ABOUT.items():
        if name in built:
            OPTIONS[name](_command(sub, name, about))
        else:
            sub.add_parser(name, help=about)
    return top


def _run_options(run: argparse.ArgumentParser) -> None:
    from fsd.model.network import DTYPES  # noqa: PLC0415
    from fsd.partition import PARTITIONERS  # noqa: PLC0415
    from fsd.run import DEFAULT_IMAGES, DEFAULT_LAYERS, DEFAULT_NEURONS  # noqa: PLC0415

    size = _Sizes()
    run.add_argument("--data", type=Path, help="Graph Challenge folder (default: generated net)")
    run.add_argument(
        "--neurons",
        type=size.neurons,
        help=f"neurons per layer N (default: from --data, else {DEFAULT_NEURONS})",
    )
    run.add_argument(
        "--layers",
        type=size.layers,
        help=f"layers to run (default: all in --data, else {DEFAULT_LAYERS})",
    )
    run.add_argument(
        "--images",
        type=size.images,
        help=f"use the first K images (default: all in --data, else {DEFAULT_IMAGES})",
    )
    run.add_argument("--workers", type=size.workers, default=4, help="workers (1..N)")
    run.add_argument(
        "--memory-mb",
        type=_memory,
        help=f"memory per worker, MB, above the {planner.BASE_MB:.0f} MB a worker holds before "
        "any model: the planner splits the model only as far as it must "
        "(default: this machine's memory shared by the workers)",
    )
    run.add_argument(
        "--partitions",
        type=size.workers,
        help="model-parallel workers per replica, dividing --workers (default: the planner's)",
    )
    run.add_argument("--channel", default="local", choices=CHANNELS, help="how workers exchange")
    run.add_argument(
        "--partition",
        default="contiguous",
        choices=PARTITIONERS,
        help="how neurons are split across workers",
    )
    run.add_argument("--dtype", default="float32", choices=DTYPES, help="weights and activations")
    run.add_argument("--seed", type=_seed, default=0, help="seed of generator and partitioner")
    run.add_argument(
        "--timeout", type=_seconds, default=settings.RUN_TIMEOUT, help="seconds for the inference"
    )
    run.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    _add_flags(run, channels.flags())  # every transport's (--nats-url...), from the registry
    run.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="write a per-worker timeline PNG of the run"
    )


def _invoke_options(inv: argparse.ArgumentParser) -> None:
    from fsd import invoke  # noqa: PLC0415

    size = _Sizes()
    where = inv.add_mutually_exclusive_group(required=True)
    where.add_argument("--function", metavar="NAME", help="the coordinator function's name")
    where.add_argument(
        "--inference-model",
        metavar="NAME",
        help="the InferenceModel whose coordinator to call (<name>-<namespace>-coordinator)",
    )
    inv.add_argument(
        "--namespace",
        default="default",
        help="the InferenceModel's namespace (with --inference-model)",
    )
    invoke.client().add_arguments(inv)  # where the platform is, how to log in
    inv.add_argument(
        "--request", type=Path, metavar="FILE", help="request JSON as in docs/api.md ('-': stdin)"
    )
    inv.add_argument(
        "--model",
        help="model name in the request (default: the request's, else the coordinator's own)",
    )
    inv.add_argument(
        "--workers",
        type=size.workers,
        help="worker functions (default: the smallest count the model was cut for)",
    )
    inv.add_argument(
        "--partition",
        choices=invoke.request_choices("partition"),
        help="how the model was cut (default: min-comm if pushed)",
    )
    inv.add_argument(
        "--channel",
        choices=invoke.request_choices("channel"),
        help="how workers exchange (default: the function's FSD_CHANNEL)",
    )
    inv.add_argument(
        "--images", type=size.images, help="use the first K stored images (default: all)"
    )
    inv.add_argument(
        "--timeout",
        type=_seconds,
        help="seconds for the inference (default: the "
        "function's FSD_TIMEOUT); the answer is awaited 30 s longer",
    )
    inv.add_argument("--json", action="store_true", help="last stdout line: the answer as JSON")


def _generate_options(gen: argparse.ArgumentParser) -> None:
    from fsd.model.layers import FORMATS  # noqa: PLC0415

    size = _Sizes()
    gen.add_argument("--neurons", type=size.neurons, required=True, help="neurons per layer, 2^k")
    gen.add_argument("--layers", type=size.layers, required=True, help="layers")
    gen.add_argument("--images", type=size.images, required=True, help="images")
    gen.add_argument("--seed", type=_seed, default=0, help="seed of network and images")
    gen.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    gen.add_argument(
        "--format",
        choices=FORMATS,
        default=FORMATS[0],
        help="layers as binary files (layers.json + one CSR file each) or Graph Challenge TSV",
    )


def _partition_options(part: argparse.ArgumentParser) -> None:
    size = _Sizes()
    part.add_argument("--data", type=Path, required=True, help="Graph Challenge folder")
    part.add_argument("--workers", type=size.workers, required=True, help="workers (1..N)")
    part.add_argument(
        "--neurons", type=size.neurons, help="neurons per layer (default: from --data)"
    )
    part.add_argument("--layers", type=size.layers, help="layers to plan (default: all in --data)")
    part.add_argument("--seed", type=_seed, default=0, help="seed of the random partitioners")
    part.add_argument("--json", action="store_true", help="one JSON object instead of a table")


def _model_options(model: argparse.ArgumentParser) -> None:
    from fsd.partition import PARTITIONERS  # noqa: PLC0415
    from fsd.stores import StoreConfig  # noqa: PLC0415

    size = _Sizes()
    verbs = model.add_subparsers(dest="verb", required=True, parser_class=_Parser, metavar="VERB")
    push = _command(verbs, "push", "cut a model for worker counts and upload it")
    push.add_argument("data", type=Path, help="Graph Challenge folder (official layout)")
    push.add_argument("--name", required=True, help="model name for requests")
    push.add_argument(
        "--workers", type=size.workers, nargs="+", required=True, help="worker counts"
    )
    push.add_argument(
        "--partition",
        nargs="+",
        default=["min-comm"],
        choices=PARTITIONERS,
        help="partitioners to cut with",
    )
    push.add_argument("--neurons", type=size.neurons, help="neurons per layer (default: from DATA)")
    push.add_argument("--layers", type=size.layers, help="layers (default: all in DATA)")
    push.add_argument("--no-images", action="store_true", help="do not store the images")
    _add_flags(push, StoreConfig.VARIABLES)
    show = _command(verbs, "show", "print a stored model's manifest")
    show.add_argument("name", help="model name given to fsd model push")
    _add_flags(show, StoreConfig.VARIABLES)


OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "run": _run_options,
    "invoke": _invoke_options,
    "generate": _generate_options,
    "partition": _partition_options,
    "model": _model_options,
}
"""What builds each command's options, with the imports its choices and flags need."""


class _Bar:
    """A progress bar over layers on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.total = 1
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, layer: int, total: int) -> None:
        self.total = total
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


def _job(args: argparse.Namespace) -> Job:
    """``fsd run``'s flags as a :class:`fsd.run.Job` (what is checked by flags, already is)."""
    from fsd.channels.settings import channel_config  # noqa: PLC0415
    from fsd.coordinator import RunConfig  # noqa: PLC0415
    from fsd.run import (  # noqa: PLC0415
        DEFAULT_IMAGES,
        DEFAULT_LAYERS,
        DEFAULT_NEURONS,
        Folder,
        Generated,
        Job,
    )

    # addresses checked before any loading or connecting
    channel = channel_config(args.channel, env=os.environ, flags=vars(args))
    model: Generated | Folder = (
        Generated(
            args.neurons or DEFAULT_NEURONS,
            args.layers or DEFAULT_LAYERS,
            args.images or DEFAULT_IMAGES,
            args.seed,
        )
        if args.data is None
        else Folder(args.data, args.neurons, args.layers, args.images, _cache_dir())
    )
    config = RunConfig(
        workers=args.workers,
        channel=args.channel,
        partition=args.partition,
        dtype=args.dtype,
        seed=args.seed,
        timeout=args.timeout,
        channel_config=channel,
    )
    return Job(model, config, memory_mb=args.memory_mb, partitions=args.partitions)


def _cmd_run(args: argparse.Namespace) -> int:
    from fsd import plot  # noqa: PLC0415
    from fsd.run import run as pipeline  # noqa: PLC0415

    # channel, partition and dtype are argparse choices: checked before anything is loaded
    if args.partitions is not None:  # and so is what the flags say together
        planner.check_partitions(args.workers, args.partitions)
    if args.plot is not None:  # fail before a long run, not after it
        plot.check_available()
        plot.check_path(args.plot)
    job = _job(args)
    bar = None if args.json else _Bar()
    try:
        result = pipeline(job, bar)
    finally:
        if bar is not None:
            bar.close()
    model = args.data.resolve().name if args.data is not None else "generated"
    gateway = settings.text(os.environ, "FSD_PUSHGATEWAY")
    if gateway:  # best effort: push_run logs a warning instead of failing the run
        from fsd import observe  # noqa: PLC0415

        observe.push_run(result, model, gateway)
    _report(result.to_json(), args.json)
    if args.plot is not None:  # after the report, so a failing plot does not hide the result
        plot.timeline(result, args.plot, model)
    return 0 if result.correct else EXIT_WRONG


def _report(data: dict[str, Any], as_json: bool) -> None:
    """A run's result, local or from a deployed coordinator: one JSON line (json escapes every
    control character), or the table, its strings (a gateway's answer's too) one printable line
    each, so no escape sequence or forged line reaches the terminal."""
    from fsd.metrics import summary  # noqa: PLC0415

    if as_json:
        print(json.dumps(data))
        return
    print(summary({k: _line(v) if isinstance(v, str) else v for k, v in data.items()}))


def _cmd_invoke(args: argparse.Namespace) -> int:
    """One request to a deployed coordinator, everything checked before it is sent."""
    from fsd import invoke  # noqa: PLC0415

    target = invoke.client().target(args, os.environ)
    request = invoke.read_request(args.request) if args.request is not None else {}
    given = {
        "model": args.model,
        "workers": args.workers,
        "partition": args.partition,
        "channel": args.channel,
        "timeout": args.timeout,
    }
    request.update({k: v for k, v in given.items() if v is not None})
    # no model: the coordinator's own (an InferenceModel's serves exactly one; others say 400)
    if args.images is not None:
        request.pop("inputs", None)
        request["images"] = {"stored": True, "first": args.images}
    elif "images" not in request and "inputs" not in request:
        request["images"] = {"stored": True}
    body = invoke.check_request(request)
    answer = invoke.invoke(target, body, invoke.wait_seconds(request))
    _report(answer, args.json)
    return EXIT_WRONG if answer.get("correct") is False else 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from fsd.model.generate import check_sizes, generate_folder  # noqa: PLC0415
    from fsd.model.tsv import output_folder  # noqa: PLC0415

    check_sizes(args.neurons, args.layers, args.images, args.seed)
    output_folder(args.out)  # an impossible place fails now, not after generating
    images = generate_folder(
        args.out, args.neurons, args.layers, args.images, args.seed, args.format
    )
    alive = len(images.truth[args.layers])
    print(
        f"wrote {_line(args.out)}: {args.neurons} neurons x {args.layers} layers, "
        f"{args.images} images ({alive} alive after {args.layers} layers)"
    )
    return 0


def _cmd_partition(args: argparse.Namespace) -> int:
    from fsd.model import load_network  # noqa: PLC0415
    from fsd.partition import PARTITIONERS, check_workers, make_plan  # noqa: PLC0415

    network = load_network(args.data, args.neurons, args.layers, cache_dir=_cache_dir())
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
    print(  # the name comes from the folder's layers.json: one printable line, escapes shown
        f"{_line(network.name)}, {args.workers} workers: activations crossing workers per image "
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

    from fsd.model import load_images  # noqa: PLC0415
    from fsd.partition import check_workers  # noqa: PLC0415
    from fsd.run import open_model  # noqa: PLC0415
    from fsd.store import ModelStore, StoreConfig  # noqa: PLC0415

    store = ModelStore(StoreConfig.from_env(os.environ, flags=vars(args)))
    if args.verb == "show":
        print(json.dumps(asdict(store.manifest(args.name)), indent=2))
        return 0
    store.prepare()  # an unreachable store fails now, not after the model is read and cut
    # a binary layer folder is cut layer by layer
    model = open_model(args.data, args.neurons, args.layers, "float32", _cache_dir())
    for w in args.workers:
        check_workers(w, model.neurons)
    images = None if args.no_images else load_images(args.data, model.neurons)
    manifest = store.push(model, args.name, args.workers, args.partition, images)
    cuts = ", ".join(sorted(manifest.partitions))
    print(f"pushed {args.name}: {model.neurons} x {model.depth}, cut for {cuts}")
    return 0


#: Libraries whose logs are their own story: at WARNING under -v (their DEBUG prints request
#: headers and retries), ERROR otherwise; an explicit --log-level applies to them too. These
#: are fsd's own; each backend declares its client library's (``LOGGERS``: :func:`_loggers`).
THIRD_PARTY_LOGGERS = ("asyncio", "urllib3")


def _loggers() -> list[str]:
    """:data:`THIRD_PARTY_LOGGERS` and those every transport, platform and store declares."""
    from fsd import launch, stores  # noqa: PLC0415

    declared = [
        *(channels.transport(kind).LOGGERS for kind in channels.TRANSPORTS),
        *(launch.platform(kind).LOGGERS for kind in launch.PLATFORMS),
        stores.loggers(),
    ]
    return sorted({*THIRD_PARTY_LOGGERS, *(name for names in declared for name in names)})


_QUIETED: set[str] = set()
"""The libraries' loggers whose level this process has set (by :class:`_Quiet`)."""


class _Quiet(logging.Filter):
    """Sets the client libraries' loggers (:func:`_loggers`) to ``level`` at the first record
    that is not fsd's own, and drops that record if it is below. Which loggers are theirs is
    every backend's declaration, and reading it loads every backend's client library (a second
    at start-up); a library logs only once it is loaded, so this waits for one to."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level
        self.done = False
        for name in _QUIETED:  # main() called again in one process: its level, at once
            logging.getLogger(name).setLevel(level)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.done or record.name == "fsd" or record.name.startswith("fsd."):
            return True
        names = _loggers()
        for name in names:
            logging.getLogger(name).setLevel(self.level)
        _QUIETED.update(names)
        self.done = True
        return record.levelno >= logging.getLogger(record.name).getEffectiveLevel()


def _setup_logging(verbose: bool, log_level: str | None) -> None:
    """One stderr handler whose :class:`~fsd.redact.SecretFilter` scrubs every record (third
    parties' too) of URL userinfo, credential headers and the configured secrets' values.

    fsd logs at WARNING, or DEBUG with -v; libraries one step quieter unless --log-level names
    a level for everyone. Like ``logging.basicConfig``, it leaves alone a logging set up by
    someone else (an application calling :func:`main`, a test runner).
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if getattr(h, "fsd_cli", False)]
    for handler in ours:  # main() called again in one process: one handler, fresh secrets
        root.removeHandler(handler)
    if len(root.handlers) > 0:
        return
    handler = logging.StreamHandler()
    handler.fsd_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    libraries = logging.NOTSET if log_level else (logging.WARNING if verbose else logging.ERROR)
    handler.addFilter(_Quiet(libraries))  # first: what it drops is not scrubbed
    handler.addFilter(_scrubber())
    root.addHandler(handler)
    level = logging.getLevelName(log_level or ("DEBUG" if verbose else "WARNING"))
    root.setLevel(level)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _cmd_run,
    "invoke": _cmd_invoke,
    "generate": _cmd_generate,
    "partition": _cmd_partition,
    "model": _cmd_model,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every failure is one line on stderr and an exit code (see README)."""
    words = sys.argv[1:] if argv is None else list(argv)
    # the command is the first word naming one: before it come only -v and --log-level LEVEL,
    # and a LEVEL naming a command is refused before any command's options are read
    given = [word for word in words if word in COMMANDS][:1]
    try:
        args = _parser(given).parse_args(words)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    verbose = bool(getattr(args, "verbose", False))
    args.verbose = verbose
    _setup_logging(verbose, getattr(args, "log_level", None))
    try:
        with lifetime.exit_on_sigterm():  # SIGTERM: unwind (stop workers, servers), exit 143
            return COMMANDS[args.command](args)
    except (InputError, NotInstalled) as exc:  # NotInstalled: pip install 'fsd[embedded]'
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
