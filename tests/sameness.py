"""Equality the tests share: deep equality of shards, plans and their parts (numpy arrays
compared exactly, dtypes too), and of sparse matrices (layers, images)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp


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


def same_csr(a: sp.csr_matrix, b: sp.csr_matrix, *, canonical: bool = False) -> bool:
    """Same shape, pattern and values (values compared in float64, so a float32 layer equals the
    float64 one it was written from). ``canonical``: duplicates summed and indices sorted in
    copies of both first (a generator's raw output against its canonical form)."""
    if canonical:
        a, b = sp.csr_matrix(a, copy=True), sp.csr_matrix(b, copy=True)
        a.sum_duplicates()
        b.sum_duplicates()
    return (
        a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data.astype(np.float64), b.data.astype(np.float64))
    )


def forbid_whole_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the whole-network loader fail the test wherever the CLI reaches it (the run
    pipeline's, and the model package's that commands import when they run): a binary layer
    folder must be read one layer at a time."""
    from fsd import model, run

    def whole(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole network was loaded")

    monkeypatch.setattr(run, "load_network", whole)
    monkeypatch.setattr(model, "load_network", whole)
