"""The run pipeline (fsd.run): one load -> plan -> prepare -> infer -> verify for the CLI, the
coordinator function (OpenFaaS and Lambda) and the benchmarks, which hold no step of it."""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

import fsd
from billing import billed_mb
from fsd import cli
from fsd.coordinator import RunConfig
from fsd.model import Images
from fsd.model.generate import generate
from fsd.run import PLANNED, Folder, Job, Local, run

SRC = Path(fsd.__file__).resolve().parent
TINY = ["--neurons", "256", "--layers", "4", "--images", "20", "--workers", "2", "--json"]


@pytest.mark.parametrize(("flags", "mb"), [([], 1769), (["--memory-mb", "4096"], 4096)])
def test_a_run_with_a_budget_prices_lambda_at_it(
    flags: list[str], mb: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--memory-mb`` is the memory of one function: Lambda is priced at it, not at the
    1769 MB default (which stays when no budget is given)."""
    assert cli.main(["run", *TINY, *flags]) == 0
    answer = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert billed_mb(answer) == pytest.approx(mb, rel=0.05)


def test_a_local_job_is_checked_against_the_truth_else_the_oracle() -> None:
    """verify: the truth for this depth when there is one (a wrong one is caught), else the
    streamed float64 oracle; a local run also reports the planner's budget and estimates."""
    network, images = generate(256, 4, 30, seed=4)
    result = run(Job(Local(network, images), RunConfig(workers=2)))
    assert (result.correct, result.checked_against) == (True, "truth")
    assert set(PLANNED) <= set(result.parallelism)
    result = run(Job(Local(network, Images(images.matrix)), RunConfig(workers=2)))
    assert (result.correct, result.checked_against) == (True, "oracle")
    wrong = Images(images.matrix, {4: images.truth[4][1:]})
    result = run(Job(Local(network, wrong), RunConfig(workers=2)))
    assert (result.correct, result.checked_against) == (False, "truth")


def test_a_streamed_model_is_cut_into_a_folder_removed_after_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A binary layer folder cut for 2 partitions goes through a temporary folder of the run's
    own clean-up scope: gone once the run is over."""
    out = tmp_path / "net"
    assert cli.main(["generate", "--neurons", "256", "--layers", "4", "--images", "20",
                     "--out", str(out)]) == 0  # fmt: skip
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made: list[Path] = []
    real = tempfile.TemporaryDirectory

    def recorded(*args: Any, **kwargs: Any) -> tempfile.TemporaryDirectory[str]:
        folder = real(*args, **kwargs)
        made.append(Path(folder.name))
        return folder

    monkeypatch.setattr(tempfile, "TemporaryDirectory", recorded)
    result = run(Job(Folder(out), RunConfig(workers=2), partitions=2))
    assert (result.correct, result.parallelism["partitions"]) == (True, 2)
    assert [p.name.startswith("fsd-layers-") for p in made if p.parent == scratch] == [True]
    assert not any(p.exists() for p in made)


#: What only the pipeline may do: plan, cut, infer, check, start a server.
STEPS = {"infer_streamed", "embedded", "has_server", "configured", "TemporaryDirectory"}


@pytest.mark.parametrize("path", ["cli.py", "functions/coordinator.py", "aws/coordinator.py"])
def test_entry_points_hold_no_step_of_the_pipeline(path: str) -> None:
    """The CLI and the coordinator functions parse and answer; every step is fsd.run's: of the
    engine they import only its settings (RunConfig), never the oracle, the planner's choice,
    a server or a temporary folder."""
    tree = ast.parse((SRC / path).read_text())
    engine = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("fsd.coordinator", "fsd.reference")
        for alias in node.names
    }
    assert engine <= {"RunConfig"}
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert used & (STEPS | {"reference"}) == set()
    planned = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "planner"
    }
    assert "choose" not in planned and "plan" not in planned
