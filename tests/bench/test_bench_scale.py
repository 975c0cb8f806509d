"""The scale benchmark (benchmarks/scale.py) end to end on a tiny net, so its command, its
parsing of ``fsd run --json`` and its planning-only mode keep working between long runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from paths import ROOT

SCRIPT = ROOT / "benchmarks" / "scale.py"
TINY = ["--neurons", "1024", "--layers", "4", "--images", "20", "--workers", "2"]

pytestmark = pytest.mark.skipif(
    shutil.which("time", path="/usr/bin") is None, reason="needs /usr/bin/time (apt: time)"
)


def test_runs_each_forced_partition_count_and_reports_memory(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = [*TINY, "--memory-mb", "2048", "--partitions", "1,2"]
    command = [sys.executable, str(SCRIPT), *args, "--cache", str(tmp_path), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["parallelism"]["partitions"] for r in rows] == [1, 2]
    assert all(r["correct"] and r["peak_rss_mb"] > 0 and r["coordinator_rss_mb"] for r in rows)
    assert rows[0]["bytes_sent"] < rows[1]["bytes_sent"]  # replicas exchange no activations
    assert "| 4 | 2 x 1, 4 |" in done.stdout and "| 4 | 1 x 2, 4 |" in done.stdout


def test_plan_only_times_the_partitioner_alone(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPT), *TINY, "--cache", str(tmp_path), "--plan-only",
               "min-comm"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["plan_only"] == "min-comm" and row["layers"] == 4 and row["workers"] == 2
    assert row["planned_volume"] > 0 and row["rss_mb"] > 0
