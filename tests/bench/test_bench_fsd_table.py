"""FSD-Inference's own table (benchmarks/fsd_table.py): the published rows hold together as the
workbook's formulas say, fsd's runs are priced from their counted requests, the table reads, and
one real tiny run goes through it end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import fsd_table
from fsd.coordinator import RunConfig

SIZES = (1024, 4096, 16384, 65536)


def test_published_rows_hold_together() -> None:
    """Each row obeys the workbook's own cost formulas (J = AD + channel; AD = (W + 1) C_inv +
    runtime x RAM/128 x C_128MB_s), so a mistyped cell shows."""
    prices = fsd_table.SPREADSHEET_PRICES
    keys = [(p.scheme, p.neurons, p.workers) for p in fsd_table.PUBLISHED]
    assert len(keys) == len(set(keys)) == 31
    for p in fsd_table.PUBLISHED:
        assert math.isclose(p.total_usd, p.lambda_usd + p.comm_usd, rel_tol=1e-8), p
        lam = (p.workers + 1) * prices["lambda_invocation"]
        lam += p.lambda_seconds_all * p.lambda_mb / 128 * prices["lambda_128mb_second"]
        assert math.isclose(p.lambda_usd, lam, rel_tol=1e-8), p
        assert p.lambda_seconds_all > p.batch_seconds * p.workers  # a Lambda runs past its batch
    assert {p.lambda_mb for p in fsd_table.PUBLISHED if p.neurons == 65536} == {4000}


def test_every_size_has_its_w8_row_or_says_why_not() -> None:
    for scheme in ("queue", "object"):
        for n in SIZES:
            row = fsd_table.published(scheme, n)
            assert (row is None) == ((scheme, n, 8) in fsd_table.MISSING), (scheme, n)
            near = fsd_table.comparable(scheme, n)
            assert near is not None
            assert near.workers == (8 if row is not None else 20)
    best = fsd_table.published("object", 65536, 62)  # the "204 s on 62 Lambdas"
    assert best is not None
    assert best.batch_seconds == pytest.approx(204.3, abs=0.05)
    assert best.cells == "'Expt Plan Object Storage'!A40:AF40"
    assert fsd_table.comparable("queue", 2048) is None


def _answer(channel: str, requests: dict[str, int], function_seconds: float) -> dict[str, Any]:
    """The parts of an ``fsd run --json`` answer that pricing reads; Lambda as fsd bills it."""
    gb_seconds = function_seconds * RunConfig().memory_mb / 1024
    return {
        "channel": channel,
        "requests": requests,
        "cost_usd": {
            "total_usd": 1.0,
            "breakdown": {"lambda_gb_second": gb_seconds * 0.0000166667},
            "requests": {"lambda_request": 9},
        },
    }


def test_a_nats_run_is_priced_as_sns_and_sqs_with_lambda_at_their_memory() -> None:
    requests = {"publish": 10, "publish_units": 12, "receive": 20, "receive_units": 20, "ack": 20}
    bill = fsd_table.priced(_answer("nats", requests, 18.0), lambda_mb=1000)
    # 12 publish units x $0.50/M; 20 receives + 20 acks (a tenth of a request each) x $0.40/M
    assert bill["transport_usd"] == pytest.approx(12 * 0.5e-6 + (20 + 2) * 0.4e-6, rel=1e-9)
    lam = 18.0 * 1000 / 1024 * 0.0000166667 + 9 * 0.2e-6
    assert bill["lambda_usd"] == pytest.approx(lam, rel=1e-9)
    assert bill["total_usd"] == pytest.approx(bill["transport_usd"] + lam, rel=1e-9)
    assert bill["function_seconds"] == pytest.approx(18.0)


def test_an_s3_run_is_priced_per_request() -> None:
    requests = {"put": 100, "list": 10, "get": 100, "get_miss": 50, "delete": 100}
    bill = fsd_table.priced(_answer("s3", requests, 0.0), lambda_mb=4000)
    assert bill["transport_usd"] == pytest.approx(110 * 0.005e-3 + 150 * 0.0004e-3, rel=1e-9)
    assert bill["lambda_usd"] == pytest.approx(9 * 0.2e-6, rel=1e-9)  # deletes are free


def _row(neurons: int, channel: str, images: int) -> dict[str, Any]:
    answer = _answer(channel, {"publish_units": 8, "receive_units": 8}, 9.0)
    answer |= {
        "correct": True,
        "seconds": 12.5,
        "plan_seconds": 1.0,
        "parallelism": {"replicas": 8, "partitions": 1, "window": 40},
        "peak_rss_mb": 100.0,
        "bytes_sent": 1,
        "activation_bytes": 0,
        "messages": 16,
    }
    return fsd_table.row(neurons, channel, "auto", images, answer)


def test_the_table_sets_fsd_beside_the_published_row() -> None:
    full = _row(65536, "nats", 10_000)
    assert full["published"]["workers"] == 20  # no W = 8 row for the queue at 65536
    assert full["published"]["missing_w8"]
    assert full["published"]["time_ratio"] == pytest.approx(12.5 / 546.6928)
    small = _row(1024, "nats", 50)
    assert small["published"]["time_ratio"] is None  # 50 images against their 10 000
    other = _row(2048, "nats", 10_000)
    failed = fsd_table.row(1024, "s3", "8", 10_000, {"error": "boom"})
    lines = fsd_table.markdown([full, small, other, failed]).splitlines()
    assert all(line.count("|") == lines[0].count("|") for line in lines), lines
    assert "| 65,536 | nats | auto | 8 x 1, window 40 | 12.5 |" in lines[2]
    assert "| queue, W = 20 | 546.7 | 2.0098 | 0.02x |" in lines[2]
    assert lines[3].endswith("| queue, W = 8 | 63.5 | 0.0215 | - | - |")
    assert lines[4].endswith("| yes | - | - | - | - | - |")
    assert "failed: boom" in lines[5]


def test_a_tiny_table_runs_for_real(tmp_path: Path) -> None:
    """One generated 1024x120 net, 50 images, 8 model-parallel workers on an embedded NATS."""
    out = tmp_path / "table.json"
    args = ["--sizes", "1024", "--images", "50", "--channels", "nats", "--partitions", "8"]
    assert fsd_table.main([*args, "--cache", str(tmp_path), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["correct"] is True
    assert row["parallelism"]["partitions"] == 8
    assert row["requests"]["publish_units"] > 0
    assert row["published"]["cells"] == "'Expt Plan Pub-Sub MQ'!A15:AF15"
    # priced again at fsd's own function memory, the counted requests give fsd's own figure
    again = fsd_table.priced(
        {"channel": "nats", "requests": row["requests"], "cost_usd": row["fsd_cost"]},
        RunConfig().memory_mb,
    )
    assert again["total_usd"] == pytest.approx(row["fsd_cost"]["total_usd"], rel=1e-6)
    assert row["priced"]["transport_usd"] > 0
