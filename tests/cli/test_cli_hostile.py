"""Hostile CLI input: every row exits 2 with exactly one stderr line, no traceback, no secret.

Rows run through ``fsd.cli.main`` in process, or through ``python -m fsd.cli`` (``sub``) where the
real exit code, the real stderr encoding or a memory limit matter. Data rows start from a small
generated folder (256 neurons x 3 layers, 20 images) and break one thing in it. A deployed
coordinator's answer to ``fsd invoke`` is hostile input too: refused in one line (exit 1) unless it
is a run result, and shown without a control character.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fsd.channels import ChannelConfig
from fsd.channels.settings import channel_config
from fsd.cli import main
from fsd.errors import InputError
from fsd.model import write_images, write_network
from fsd.model.generate import generate

LAYER2 = Path("neuron256") / "n256-l2.tsv"
IMAGES = Path("sparse-images-256.tsv")
TRUTH = Path("neuron256-l3-categories.tsv")
#: Address-space cap of subprocess rows: an unbounded allocation fails fast instead of swapping.
MEMORY_CAP = 4 << 30
TINY = ["--neurons", "256", "--layers", "2", "--images", "10"]


@dataclass
class Row:
    argv: list[str]  # "{data}" stands for the (possibly broken) data folder
    message: str  # must appear in the one stderr line
    breaks: Callable[[Path], Path] | None = None  # damages the data folder, returns its path
    env: dict[str, str] = field(default_factory=dict)
    sub: bool = False  # run as a real process


def _gzip(path: Path) -> Path:
    packed = path.with_name(path.name + ".gz")
    packed.write_bytes(gzip.compress(path.read_bytes(), mtime=0))
    path.unlink()
    return packed


def _truncate_gzip(rel: Path) -> Callable[[Path], Path]:
    def breaks(root: Path) -> Path:
        packed = _gzip(root / rel)
        data = packed.read_bytes()
        packed.write_bytes(data[: len(data) // 2])
        return root

    return breaks


def _corrupt_gzip(root: Path) -> Path:
    packed = _gzip(root / LAYER2)
    data = bytearray(packed.read_bytes())
    data[500:520] = bytes(20)
    packed.write_bytes(bytes(data))
    return root


def _set_line(rel: Path, line: int, text: str) -> Callable[[Path], Path]:
    def breaks(root: Path) -> Path:
        lines = (root / rel).read_text().splitlines()
        lines[line - 1] = text
        (root / rel).write_text("\n".join(lines) + "\n")
        return root

    return breaks


def _append(rel: Path, text: str) -> Callable[[Path], Path]:
    def breaks(root: Path) -> Path:
        with (root / rel).open("a") as fh:
            fh.write(text)
        return root

    return breaks


def _duplicate(root: Path) -> Path:
    path = root / LAYER2
    path.write_text(path.read_text() + path.read_text().splitlines()[6] + "\n")
    return root


def _truth_is_a_folder(root: Path) -> Path:
    (root / "neuron256-l5-categories.tsv").mkdir()
    return root


def _huge_neuron_folder(root: Path) -> Path:
    shutil.rmtree(root / "neuron256")
    (root / "neuron999999999").mkdir()
    (root / "neuron999999999" / "n999999999-l1.tsv").write_text("1\t1\t0.5\n")
    return root


def _non_utf8_name(root: Path) -> Path:
    """The folder renamed to a name with byte 0xff (not UTF-8), its first layer overflowing."""
    _set_line(Path("neuron256") / "n256-l1.tsv", 5, "1\t5\t1e308")(root)
    renamed = Path(os.fsdecode(os.fsencode(root) + b"\xff"))
    root.rename(renamed)
    return renamed


def _write(name: str, text: str) -> Callable[[Path], Path]:
    def breaks(root: Path) -> Path:
        (root / name).write_text(text)
        return root

    return breaks


#: Credentials planted in addresses; neither may ever reach a message.
USER, PASSWORD = "AKID42", "hunter2"
SECRET_S3 = f"ftp://{USER}:{PASSWORD}@host"
INVOKE = ["invoke", "--function", "gc1024-default-coordinator", "--model", "gc1024"]
#: A run whose data folder is missing: a flag refused says so before anything is loaded
NO_DATA = ["run", "--data", "{data}/missing"]
WHOLE = "must be a whole number in"
MEMORY = f"argument --memory-mb: {WHOLE} (200, 16777216]"
TIMEOUT = "argument --timeout: must be a number in (0, 86400]"
ROWS = {
    # numeric flags: bounded and finite, plain decimals as in fsd.settings (no 1e3, 0x10, 1_0)
    "seed-negative": Row(["run", *TINY, "--seed", "-1"], f"argument --seed: {WHOLE} 0..4294967295"),
    "seed-minus-zero": Row(["run", *TINY, "--seed", "-0"], "argument --seed: must be"),
    "seed-too-big": Row(["run", *TINY, "--seed", str(2**64)], f"argument --seed: {WHOLE} 0..4"),
    "timeout-nan": Row(["run", *TINY, "--timeout", "nan"], "argument --timeout"),
    "timeout-inf": Row(["run", *TINY, "--timeout", "inf"], "argument --timeout"),
    "timeout-huge": Row(["run", *TINY, "--timeout", "1e9"], "argument --timeout"),
    "timeout-exponent": Row(
        [*NO_DATA, "--timeout", "1e3"], f"{TIMEOUT} (plain decimal digits), got '1e3'"
    ),
    "timeout-underscore": Row(
        [*NO_DATA, "--timeout", "1_0"], f"{TIMEOUT} (plain decimal digits), got '1_0'"
    ),
    "timeout-arabic-digits": Row([*NO_DATA, "--timeout", "\u0661"], TIMEOUT),
    "neurons-huge": Row(
        ["generate", "--neurons", str(2**40), "--layers", "2", "--images", "5", "--out", "{data}"],
        f"argument --neurons: {WHOLE} 1..1048576",
        sub=True,
    ),
    "images-underscore": Row([*NO_DATA, "--images", "1_0"], "argument --images: must be"),
    "neurons-underscore": Row([*NO_DATA, "--neurons", "2_56"], "argument --neurons: must be"),
    "generate-seed-minus-zero": Row(
        ["generate", *TINY, "--seed", "-0", "--out", "{data}/g"], "argument --seed: must be"
    ),
    # fsd run --workers W --memory-mb M --partitions P: refused before any loading or server
    "workers-hex": Row([*NO_DATA, "--workers", "0x10"], f"--workers: {WHOLE} 1..1048576"),
    "workers-exponent": Row([*NO_DATA, "--workers", "1e1"], "argument --workers: must be"),
    "workers-underscore": Row([*NO_DATA, "--workers", "1_6"], "argument --workers: must be"),
    "workers-empty": Row([*NO_DATA, "--workers", ""], f"--workers: {WHOLE} 1..1048576"),
    "memory-zero": Row([*NO_DATA, "--memory-mb", "0"], f"{MEMORY}, got '0'"),
    "memory-negative": Row([*NO_DATA, "--memory-mb", "-1"], MEMORY),
    "memory-exponent": Row([*NO_DATA, "--memory-mb", "1e3"], MEMORY),
    "memory-nan": Row([*NO_DATA, "--memory-mb", "nan"], MEMORY, sub=True),
    "memory-inf": Row([*NO_DATA, "--memory-mb", "inf"], MEMORY),
    "memory-hex": Row([*NO_DATA, "--memory-mb", "0x10"], MEMORY),
    "memory-underscore": Row([*NO_DATA, "--memory-mb", "1_000"], MEMORY),
    "memory-arabic-digits": Row([*NO_DATA, "--memory-mb", "\u0661\u0660\u0660\u0660"], MEMORY),
    "memory-huge": Row([*NO_DATA, "--memory-mb", str(10**30)], MEMORY),
    "memory-empty": Row([*NO_DATA, "--memory-mb", ""], MEMORY),
    "memory-below-any-worker": Row([*NO_DATA, "--memory-mb", "200"], f"{MEMORY}, got '200'"),
    "partitions-zero": Row([*NO_DATA, "--partitions", "0"], f"--partitions: {WHOLE} 1..1048576"),
    "partitions-underscore": Row([*NO_DATA, "--partitions", "1_0"], "--partitions: must be"),
    "partitions-not-dividing": Row(
        [*NO_DATA, "--workers", "4", "--partitions", "3"], "--partitions 3 must divide --workers 4"
    ),
    "partitions-above-workers": Row(
        [*NO_DATA, "--workers", "4", "--partitions", "8", "--channel", "nats"],
        "--partitions 8 must divide --workers 4",
        sub=True,
    ),
    "push-workers-underscore": Row(
        ["model", "push", "{data}", "--name", "m", "--workers", "4", "1_6"], "--workers: must be"
    ),
    # model and image files
    "gzip-truncated": Row(
        ["run", "--data", "{data}"], "n256-l2.tsv.gz:", _truncate_gzip(LAYER2), sub=True
    ),
    "gzip-corrupt": Row(["run", "--data", "{data}"], "n256-l2.tsv.gz:1: corrupt", _corrupt_gzip),
    "truth-gzip-truncated": Row(
        ["run", "--data", "{data}"], "categories.tsv.gz:", _truncate_gzip(TRUTH)
    ),
    "image-id-2e9": Row(
        ["run", "--data", "{data}"],
        "sparse-images-256.tsv:446: id 2000000000 in field 1 is outside 1..1048576",
        _append(IMAGES, "2000000000\t5\t1\n"),
        sub=True,
    ),
    "weight-inf-in-float32": Row(
        ["run", "--data", "{data}"],
        "n256-l1.tsv:5: value 1e308 overflows float32",
        _set_line(Path("neuron256") / "n256-l1.tsv", 5, "1\t5\t1e308"),
    ),
    "pixel-inf-in-float32": Row(
        ["run", "--data", "{data}"],
        "sparse-images-256.tsv:3: value 1e300 overflows float32",
        _set_line(IMAGES, 3, "1\t54\t1e300"),
    ),
    "duplicate-entry": Row(
        ["run", "--data", "{data}"], "n256-l2.tsv:8193: duplicate entry 1 49", _duplicate
    ),
    "truth-is-a-folder": Row(["run", "--data", "{data}"], "Is a directory", _truth_is_a_folder),
    "truth-id-beyond-images": Row(
        ["run", "--data", "{data}"],
        "categories.tsv:10: image id 99999 is outside 1..20",
        _append(TRUTH, "99999\n"),
    ),
    "neuron-folder-huge": Row(
        ["run", "--data", "{data}"],
        "neurons must be between 1 and 1048576",
        _huge_neuron_folder,
        sub=True,
    ),
    "non-utf8-data-path": Row(
        ["run", "--data", "{data}"], "\\xff/neuron256/n256-l1.tsv:5", _non_utf8_name, sub=True
    ),
    # output paths
    "out-in-proc": Row(["generate", *TINY, "--out", "/proc/nope"], "cannot create folder"),
    "out-is-a-file": Row(["generate", *TINY, "--out", f"{{data}}/{IMAGES}"], "not a folder"),
    "out-non-utf8": Row(
        ["generate", *TINY, "--out", "/proc/\udcffnope"], "/proc/\\xffnope", sub=True
    ),
    # addresses: checked before use, never echoed with their credentials
    "s3-endpoint-ftp-with-keys": Row(
        ["run", *TINY, "--channel", "s3", "--s3-endpoint", SECRET_S3], "--s3-endpoint must use"
    ),
    "nats-url-bad-port": Row(
        ["run", *TINY, "--channel", "nats", "--nats-url", f"nats://{USER}:{PASSWORD}@h:bad-port"],
        "--nats-url is not a valid URL: nats://***@h:bad-port",
    ),
    "s3-endpoint-env-with-keys": Row(
        ["model", "show", "m"],
        "FSD_S3_ENDPOINT must not hold credentials",
        env={"FSD_S3_ENDPOINT": f"https://{USER}:{PASSWORD}@h"},
        sub=True,
    ),
    "stray-url-argument": Row(
        ["run", "--nats-url=x", f"nats://{USER}:{PASSWORD}@host"],
        "unrecognized arguments: nats://***@host",
    ),
    # messages stay one line whatever the input holds
    "newline-in-path": Row(["run", "--data", "/nonexistent\nsecond line"], "not found"),
    # fsd invoke: everything checked before anything is sent (the default gateway is not there)
    "invoke-gateway-with-credentials": Row(
        [*INVOKE, "--gateway", f"http://{USER}:{PASSWORD}@gw:8080"],
        "--gateway must not hold credentials",
    ),
    "invoke-gateway-env-ftp": Row(
        INVOKE, "OPENFAAS_URL must be http(s)://", env={"OPENFAAS_URL": SECRET_S3}
    ),
    "invoke-gateway-bad-port": Row([*INVOKE, "--gateway", "http://gw:99999"], "not a valid URL"),
    "invoke-function-path": Row(
        ["invoke", "--function", "../system/secrets", "--model", "m"], "is not a DNS-1123 label"
    ),
    "invoke-function-upper": Row(
        ["invoke", "--function", "Coordinator", "--model", "m"], "is not a DNS-1123 label"
    ),
    "invoke-no-function": Row(["invoke", "--model", "m"], "one of the arguments --function"),
    "invoke-two-functions": Row(
        [*INVOKE, "--inference-model", "gc1024"], "not allowed with argument --function"
    ),
    "invoke-channel-local": Row([*INVOKE, "--channel", "local"], "invalid choice: 'local'"),
    "invoke-workers-zero": Row([*INVOKE, "--workers", "0"], f"--workers: {WHOLE} 1..1048576"),
    "invoke-timeout-nan": Row([*INVOKE, "--timeout", "nan"], "argument --timeout"),
    "invoke-timeout-exponent": Row([*INVOKE, "--timeout", "1e3"], TIMEOUT),
    "invoke-images-underscore": Row([*INVOKE, "--images", "1_0"], "argument --images: must be"),
    "invoke-password-file-missing": Row(
        [*INVOKE, "--password-file", "{data}/nope"], "cannot read the password file"
    ),
    "invoke-password-file-empty": Row(
        [*INVOKE, "--password-file", "{data}/empty"], "is empty", _write("empty", "\n")
    ),
    "invoke-request-missing": Row(
        [*INVOKE, "--request", "{data}/nope.json"], "cannot read the request"
    ),
    "invoke-request-nan": Row(
        ["invoke", "--function", "f", "--request", "{data}/r.json"],
        "is not valid JSON: NaN is not a JSON number",
        _write("r.json", '{"model": "m", "timeout": NaN, "images": {"stored": true}}'),
    ),
    "invoke-request-a-list": Row(
        ["invoke", "--function", "f", "--request", "{data}/r.json"],
        "is not a JSON object",
        _write("r.json", "[1, 2]"),
    ),
    "invoke-request-address": Row(  # addresses come from the function's own configuration
        ["invoke", "--function", "f", "--request", "{data}/r.json"],
        "invalid request: request: Additional properties are not allowed",
        _write(
            "r.json",
            json.dumps(
                {
                    "model": "m",
                    "images": {"stored": True},
                    "nats_url": f"nats://{USER}:{PASSWORD}@h",
                }
            ),
        ),
    ),
    "invoke-request-both-images": Row(
        ["invoke", "--function", "f", "--request", "{data}/r.json"],
        "invalid request",
        _write(
            "r.json",
            '{"model": "m", "images": {"stored": true}, "inputs": '
            '{"count": 1, "rows": [1], "cols": [1]}}',
        ),
    ),
    "invoke-model-name-bad": Row(
        ["invoke", "--function", "f", "--model", "../etc"], "invalid request: model"
    ),
}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "data"
    network, images = generate(256, 3, 20, seed=0)
    write_network(root, network)
    write_images(root, images)
    return root


#: ``python -m fsd.cli`` under an address-space cap (set in the child: no preexec_fn in a
#: possibly threaded test process).
CAPPED_CLI = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_CAP}, {MEMORY_CAP})); "
    "runpy.run_module('fsd.cli', run_name='__main__', alter_sys=True)"
)


def _in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _subprocess(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", CAPPED_CLI, *argv],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stderr.decode("utf-8", "backslashreplace")


@pytest.mark.parametrize("name", list(ROWS))
def test_hostile_input_exits_2_with_one_line(
    name: str,
    clean: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    row = ROWS[name]
    for var in [v for v in os.environ if v.startswith(("FSD_", "AWS_", "OPENFAAS_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONIOENCODING", "utf-8")  # strict stdout: no encoding error hides
    for var, value in row.env.items():
        monkeypatch.setenv(var, value)
    root = tmp_path / "data"
    shutil.copytree(clean, root)
    if row.breaks is not None:
        root = row.breaks(root)
    argv = [arg.replace("{data}", str(root)) for arg in row.argv]
    code, err = _subprocess(argv, dict(os.environ)) if row.sub else _in_process(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("fsd: error: ")
    assert row.message in lines[0]
    assert "Traceback" not in err
    assert USER not in err and PASSWORD not in err


GOOD_ADDRESSES = [
    ("nats", "nats://127.0.0.1:4222"),
    ("nats", f"nats://{USER}:{PASSWORD}@a:4222, tls://b:4443"),
    ("nats", "ws://c/path,wss://[::1]:443"),
    ("nats", "host:4222"),  # nats:// implied, as the client does
    ("s3", "http://127.0.0.1:8333"),
    ("s3", "https://s3.amazonaws.com/"),
    ("s3", "minio:9000"),  # http:// implied, as the S3 client does
]
BAD_ADDRESSES = [
    ("nats", f"nats://{USER}:{PASSWORD}@h:bad-port", "not a valid URL"),
    ("nats", f"http://{USER}:{PASSWORD}@h:4222", "must use nats, tls, ws, wss"),
    ("nats", "nats://a:4222,,nats://b:4222", "empty URL"),
    ("nats", "nats://h:0", "port in 1..65535"),
    ("nats", "nats://h:4222\nX", "control characters"),
    ("nats", f"nats://{USER}:{PASSWORD}@a:4222,ws://c", "mixes websocket"),  # nats-py refuses it
    ("s3", SECRET_S3, "must use http, https"),
    ("s3", f"https://{USER}:{PASSWORD}@h", "must not hold credentials"),
    ("s3", f"{USER}:{PASSWORD}@h:9000", "must not hold credentials"),
    ("s3", f"https://h/bucket?X-Amz-Signature={PASSWORD}", "nothing after"),
    ("s3", "https://h:99999", "not a valid URL"),
]


def _settings(kind: str, address: str, source: str) -> ChannelConfig:
    """channel_config with ``address`` given by flag (``source`` starts with --) or environment."""
    if source.startswith("--"):
        return channel_config(kind, flags={source[2:].replace("-", "_"): address}, env={})
    return channel_config(kind, env={source: address})


SOURCES = {
    "nats": ("--nats-url", "FSD_NATS_URL"),
    "s3": ("--s3-endpoint", "FSD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
}


def test_addresses_are_checked_where_cli_and_functions_read_them() -> None:
    """channel_config is the one place flags and environment become addresses (the functions
    call it too): bad ones are InputErrors naming their source, never showing credentials."""
    for kind, address in GOOD_ADDRESSES:
        for source in SOURCES[kind]:
            assert _settings(kind, address, source).address == address
    for kind, address, reason in BAD_ADDRESSES:
        for source in SOURCES[kind]:
            with pytest.raises(InputError, match=reason) as info:
                _settings(kind, address, source)
            message = str(info.value)
            assert message.startswith(source)
            assert USER not in message and PASSWORD not in message


# --- fsd invoke: a hostile answer -----------------------------------------------------------

#: A run result as a coordinator function answers it (metrics.RunResult.to_json's fields).
RESULT = {
    "categories": [3, 7],
    "n_categories": 2,
    "correct": True,
    "checked_against": "truth",
    "seconds": 0.5,
    "load_seconds": 0.25,
    "plan_seconds": 0.125,
    "edges_per_second": 2.5e9,
    "images": 20,
    "workers": 2,
    "channel": "nats",
    "partition": "min-comm",
    "dtype": "float32",
    "bytes_sent": 1000,
    "messages": 4,
    "comm_share": 0.25,
    "cost_usd": {"total_usd": 1.5e-06},
    "per_layer": [],
}
#: What each hostile answer changes: a field and the JSON text it takes, and the message
#: (None: the answer is a run result, shown with its strings made one printable line).
ANSWERS = {
    "cost-inf": ("cost_usd", '{"total_usd": 1e400}', "non-finite number"),
    "cost-negative": ("cost_usd", '{"total_usd": -1}', "without a valid 'cost_usd'"),
    "seconds-inf": ("seconds", "-1e999", "non-finite number"),
    "seconds-negative": ("seconds", "-3", "without a valid 'seconds'"),
    "bytes-int-overflows-float": ("bytes_sent", "1" + "0" * 400, "without a valid 'bytes_sent'"),
    "rate-int-overflows-float": ("edges_per_second", "9" * 330, "'edges_per_second'"),
    "share-above-one": ("comm_share", "1e300", "without a valid 'comm_share'"),
    "unprinted-field-inf": ("planned_volume", "1e400", "non-finite number"),  # --json prints it
    "partition-too-long": ("partition", json.dumps("x" * 5000), "without a valid 'partition'"),
    "partition-escapes": ("partition", json.dumps("min\x1b[2J\rcomm\nfsd: forged"), None),
    "channel-bidi": ("channel", json.dumps("nats\u202e\x07"), None),
    "checked-against-newline": ("checked_against", json.dumps("truth\n\nfsd: ok"), None),
}


@pytest.fixture(scope="module")
def answering() -> Iterator[tuple[str, list[bytes]]]:
    """A gateway that answers every POST 200 with the next body of its list (a compromised or
    misconfigured coordinator: what it says is hostile until checked)."""
    bodies: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = bodies.pop(0) if bodies else b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def _hostile(field: str, text: str) -> bytes:
    answer = {**RESULT, field: "@HOSTILE@"}
    return json.dumps(answer).replace('"@HOSTILE@"', text).encode()


#: (answer, --json): refused answers both ways, strings in the table (JSON escapes them itself)
HOSTILE = [
    pytest.param(name, as_json, id=f"{name}-{'json' if as_json else 'table'}")
    for name, (_, _, message) in ANSWERS.items()
    for as_json in ((False, True) if message else (False,))
]


@pytest.mark.parametrize(("name", "as_json"), HOSTILE)
def test_hostile_answer_is_refused_or_printed_safely(
    name: str,
    as_json: bool,
    answering: tuple[str, list[bytes]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every number the summary prints is finite and within its bounds, and no number in the
    answer is one JSON cannot carry (--json prints it back); strings from the gateway reach the
    terminal as one printable line each: no escape sequence, no forged line."""
    url, bodies = answering
    for var in [v for v in os.environ if v.startswith(("FSD_", "OPENFAAS_"))]:
        monkeypatch.delenv(var)
    field, text, message = ANSWERS[name]
    bodies.append(_hostile(field, text))
    argv = ["invoke", "--function", "coordinator", "--gateway", url]
    code = main([*argv, "--json"] if as_json else argv)
    out, err = capsys.readouterr()
    if message is not None:
        assert code == 1, out + err
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fsd: failed: "), err
        assert message in lines[0]
        return
    assert code == 0, err
    assert err == ""
    rows = out.splitlines()
    assert [row.split()[0] for row in rows] == [
        "categories",
        "correct",
        "inference",
        "loading",
        "rate",
        "workers",
        "channel",
        "traffic",
        "communication",
        "cost",
    ]
    assert all(row.isprintable() for row in rows), rows


def test_partition_shows_a_hostile_model_name_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The name in a model folder's layers.json is the file's to choose: ``fsd partition``
    prints it as one printable line (no terminal escape, forged line or reordering runs)."""
    root = tmp_path / "net"
    assert main(["generate", *TINY, "--out", str(root)]) == 0
    header = root / "neuron256" / "layers.json"
    doc = json.loads(header.read_text())
    doc["name"] = "net\x1b[2J\x1b]0;owned\x07\nfsd: error: forged\r\u202eevil"
    header.write_text(json.dumps(doc))
    capsys.readouterr()
    assert main(["partition", "--data", str(root), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\r\u202e"), out
    assert not any(line.startswith("fsd:") for line in out.splitlines()), out
    assert out.splitlines()[0].startswith("net\\x1b[2J\\x1b]0;owned\\x07 fsd: error: forged")
