"""Compiled kernels against scipy on random sparse matrices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fsd import kernels


def _csr(m: Any, dtype: type = np.float64) -> kernels.Csr:
    c = sp.csr_matrix(m)
    return c.indptr.astype(np.int64), c.indices.astype(np.int32), c.data.astype(dtype)


def _weights(m: Any, dtype: type = np.float64) -> kernels.Weights:
    c = sp.csr_matrix(m)
    return (*_csr(c, dtype), *_csr(c.T, dtype))


def _dense(csr: kernels.Csr, shape: tuple[int, int]) -> np.ndarray:
    return sp.csr_matrix((csr[2], csr[1], csr[0]), shape=shape).toarray()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(0, 2**16),
    st.sampled_from([0.05, 0.3, 0.9]),
)
def test_split_layer_equals_oracle(
    rows: int, inner: int, cols: int, seed: int, density: float
) -> None:
    """Both row paths (sparse scatter, dense block) and both halves (local, received)."""
    y = sp.csr_matrix(sp.random(rows, inner, density=density, random_state=seed) * 10)
    w = sp.csr_matrix(
        sp.random(inner, cols, density=0.3, random_state=seed + 1)
        - sp.random(inner, cols, density=0.1, random_state=seed + 2)
    )
    expected = sp.csr_matrix(y @ w)
    expected.data += -0.3
    expected = np.clip(expected.toarray(), 0, 32) * (expected.toarray() != 0)
    cut = inner // 2  # first half "local", second half "received"
    z = kernels.partial_product(*_csr(y[:, :cut]), *_weights(w[:cut]), cols)
    out = kernels.finish_layer(*z, *_csr(y[:, cut:]), *_weights(w[cut:]), cols, -0.3, 32.0)
    np.testing.assert_allclose(_dense(out, (rows, cols)), expected, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**16))
def test_gather_and_coo_round_trip(rows: int, cols: int, seed: int) -> None:
    y = sp.csr_matrix(sp.random(rows, cols, density=0.4, random_state=seed))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(cols, size=rng.integers(0, cols + 1), replace=False))
    selmap = np.full(cols, -1, np.int32)
    selmap[chosen] = np.arange(len(chosen))
    r, n, p, v = kernels.gather_columns(*_csr(y), selmap, np.empty(0, np.uint16))
    assert p.dtype == np.uint16
    assert n.sum() == len(p) and (n > 0).all()
    back = kernels.coo_to_csr(rows, np.repeat(r, n), p, v)
    np.testing.assert_array_equal(_dense(back, (rows, len(chosen))), y[:, chosen].toarray())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes_keep_their_type(dtype: type) -> None:
    kernels.warm_up(dtype)
    y = _csr(sp.eye(4), dtype)
    w = _weights(sp.eye(4), dtype)
    out = kernels.finish_layer(*kernels.empty_csr(4, np.dtype(dtype)), *y, *w, 4, 0.5, 1.0)
    assert out[2].dtype == dtype
    np.testing.assert_array_equal(out[2], np.ones(4, dtype))
