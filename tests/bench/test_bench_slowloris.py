"""benchmarks/slowloris.py, as docs/benchmarks.md runs it, small: tricklers past a small
connection limit, and health still answered every time."""

from __future__ import annotations

import pytest

import slowloris


def test_health_answers_through_a_small_slowloris(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--clients", "40", "--limit", "30", "--period", "1", "--seconds", "6"]
    assert slowloris.main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("40 tricklers") and " 0 failed" in line, line
