"""Hypothesis: random shapes, dtypes and values (NaN, inf, extremes) against the reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradguard as gg
from conftest import DTYPES
from gradguard import reference

NATIVE = [d for d in DTYPES if d.kind == "f"]  # hypothesis draws NumPy's own float dtypes


@st.composite
def gradient_lists(draw, allow_nonfinite=True):
    count = draw(st.integers(0, 5))
    arrays = []
    for _ in range(count):
        dtype = draw(st.sampled_from(NATIVE))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
        # Finite values stay below 1e300: at DBL_MAX a correctly rounded norm may
        # round either way across the overflow threshold (tested separately).
        bound = 1e300 if dtype == np.float64 else None
        elements = st.floats(
            min_value=-bound if bound else None,
            max_value=bound,
            allow_nan=False,
            allow_infinity=False,
            width=8 * dtype.itemsize,
        )
        if allow_nonfinite:
            elements = st.one_of(elements, st.sampled_from([math.nan, math.inf, -math.inf]))
        arrays.append(draw(hnp.arrays(dtype, shape, elements=elements)))
    return arrays


def close(actual, expected, rel):
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == pytest.approx(expected, rel=rel, abs=1e-300)


@settings(max_examples=300, deadline=None)
@given(gradient_lists(), st.sampled_from([2.0, 1.0, math.inf, 3.0]))
def test_global_norm(arrays, ord):
    assert close(gg.global_norm(arrays, ord=ord), reference.global_norm(arrays, ord), rel=1e-6)


@settings(max_examples=300, deadline=None)
@given(gradient_lists())
def test_grad_stats_counts_and_extremes(arrays):
    stats = gg.grad_stats(arrays)
    expected = reference.grad_stats(arrays)
    for field in ("numel", "n_nan", "n_inf", "n_zero"):
        np.testing.assert_array_equal(getattr(stats, field), expected[field])
    np.testing.assert_array_equal(stats.min, expected["min"])
    np.testing.assert_array_equal(stats.max, expected["max"])


@settings(max_examples=200, deadline=None)
@given(gradient_lists(allow_nonfinite=False), st.floats(0.0, 1e6))
def test_clip_by_global_norm(arrays, max_norm):
    copies = [a.copy() for a in arrays]
    expected_total, expected = reference.clip_by_global_norm(copies, max_norm)
    total = gg.clip_by_global_norm(arrays, max_norm)
    assert close(total, expected_total, rel=1e-6)
    for actual, wanted in zip(arrays, expected):
        np.testing.assert_allclose(
            actual.astype(np.float64), wanted.astype(np.float64), rtol=2e-3 if actual.dtype == np.float16 else 1e-6
        )
