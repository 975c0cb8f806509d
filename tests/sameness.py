"""Deep equality of shards, plans and their parts (numpy arrays compared exactly, dtypes too),
shared by the shard, store and streaming tests."""

from __future__ import annotations

import numpy as np
import pytest


def same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y)
    elif hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            same(getattr(a, name), getattr(b, name))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            same(a[key], b[key])
    else:
        assert a == b


def forbid_whole_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``fsd.cli``'s whole-network loader fail the test: a binary layer folder must be
    read one layer at a time."""
    from fsd import cli

    def whole(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole network was loaded")

    monkeypatch.setattr(cli, "load_network", whole)
