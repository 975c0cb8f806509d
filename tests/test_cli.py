"""The CLI contract: flags, JSON fields, exit codes, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsd import cli
from fsd.cli import main

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
                 "--out", str(out)]) == 0  # fmt: skip
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
        (["run", "--workers", "0", "--neurons", "256", "--layers", "2"], "must be >= 1"),
        (["run", "--workers", "300", "--neurons", "256", "--layers", "2"], "between 1 and 256"),
        (["run", "--channel", "carrier-pigeon"], "unknown channel"),
        (["run", "--partition", "magic"], "unknown partitioner"),
        (["run", "--images", "-3"], "must be >= 1"),
        (["run", "--layers", "abc"], "not an integer"),
        (["run", "--neurons", "1000", "--layers", "2"], "power of two"),
        (["run", "--dtype", "float16", "--neurons", "256", "--layers", "2"], "unknown dtype"),
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


def test_bad_data_files_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    main(["generate", "--neurons", "256", "--layers", "3", "--images", "10", "--out", str(out)])
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
    main(["generate", "--neurons", "256", "--layers", "2", "--images", "10", "--out", str(out)])
    layer = out / "neuron256" / "n256-l1.tsv"
    lines = layer.read_text().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\t1e300"  # finite in float64, not in float32
    layer.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["run", "--data", str(out), "--workers", "2", "--json"]) == 2
    assert f"{layer}:5: value 1e300 overflows float32" in capsys.readouterr().err
    code = main(["run", "--data", str(out), "--workers", "2", "--dtype", "float64", "--json"])
    assert code in (0, 1)  # runs (the truth was computed for the unchanged weight)
