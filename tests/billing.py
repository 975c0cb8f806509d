"""What an answer's Lambda part was billed at, as the cost model prices it: shared by the run
pipeline's tests (engine/) and the functions' (functions/)."""

from __future__ import annotations

from typing import Any

from fsd.cost import billed_gb_seconds, declared_prices


def billed_mb(answer: dict[str, Any]) -> float:
    """The memory per function (MB) an answer's Lambda part was priced at: its GB-seconds
    over those its functions' seconds make at 1 GB."""
    rate = declared_prices().rate("lambda_gb_second")
    gb_seconds = answer["cost_usd"]["breakdown"]["lambda_gb_second"] / rate
    return float(1024 * gb_seconds / billed_gb_seconds(answer["function_seconds"], 1024))
