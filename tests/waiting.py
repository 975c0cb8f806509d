"""The one way tests wait for something another process or thread does: poll, never sleep blind."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``probe`` until it returns something truthy and return that; fail naming ``what``
    (and the last answer) after ``timeout`` seconds: a bound that detects a hang, not a timing
    assertion."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}; last: {last!r}")
        time.sleep(interval)
