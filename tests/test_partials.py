"""Mergeable norm partials: split anywhere, combined in order, they give
gg.global_norm bit for bit, on every SIMD target and thread count."""

import math

import numpy as np
import pytest

import gradguard as gg

ORDERS = [2.0, 1.0, math.inf, 3.0, 0.5, 50.0]


def _arrays(rng, scale=1.0, dtypes=(np.float32, np.float64, np.float16)):
    arrays = []
    for index in range(int(rng.integers(1, 12))):
        size = int(rng.choice([0, 1, 7, 1000, 70_000, 150_001]))
        dtype = dtypes[index % len(dtypes)]
        arrays.append((rng.standard_normal(size) * scale).astype(dtype))
    return arrays


def _split(rng, arrays):
    cuts = sorted(rng.integers(0, len(arrays) + 1, int(rng.integers(0, 4))).tolist())
    edges = [0, *cuts, len(arrays)]
    return [arrays[a:b] for a, b in zip(edges[:-1], edges[1:])]


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("ord", ORDERS)
def test_combined_partials_equal_global_norm_bit_for_bit(ord, simd_target):
    rng = np.random.default_rng(ORDERS.index(ord))
    for _ in range(6):
        arrays = _arrays(rng)
        parts = [gg.norm_partials(chunk, ord) for chunk in _split(rng, arrays)]
        assert _same(gg.combine_norm_partials(parts), gg.global_norm(arrays, ord))


def test_partials_do_not_depend_on_threads_or_neighbours():
    rng = np.random.default_rng(1)
    arrays = _arrays(rng, dtypes=(np.float32,))
    previous = gg.get_num_threads()
    try:
        gg.set_num_threads(1)
        alone = [gg.norm_partials([a]).power_sum[0] for a in arrays]
        gg.set_num_threads(2)
        together = gg.norm_partials(arrays).power_sum
    finally:
        gg.set_num_threads(previous)
    np.testing.assert_array_equal(alone, together)


@pytest.mark.parametrize("ord, scale", [(2.0, 1e200), (2.0, 1e-200), (3.0, 1e150), (3.0, 1e-150), (1.0, 1e-300)])
def test_the_rare_path_needs_rescaled_partials_and_is_then_exact(ord, scale):
    rng = np.random.default_rng(2)
    arrays = _arrays(rng, scale=scale, dtypes=(np.float64,)) + [np.array([3.0, 4.0])]
    expected = gg.global_norm(arrays, ord)
    assert math.isfinite(expected) and expected > 0
    chunks = _split(rng, arrays)
    plain = [gg.norm_partials(chunk, ord) for chunk in chunks]
    with pytest.raises(gg.RescaledPartialsNeeded):
        gg.combine_norm_partials(plain)
    rescaled = [gg.norm_partials(chunk, ord, rescaled=True) for chunk in chunks]
    assert gg.combine_norm_partials(rescaled) == expected


def test_non_finite_values_reach_the_combination():
    parts = [gg.norm_partials([np.ones(3, np.float32)]), gg.norm_partials([np.array([1.0, np.inf])])]
    assert gg.combine_norm_partials(parts) == math.inf
    parts.append(gg.norm_partials({"bad": np.array([np.nan], np.float32)}))
    assert math.isnan(gg.combine_norm_partials(parts))
    assert parts[2].names == ("bad",) and bool(parts[2].has_nan[0])


def test_combination_refuses_mixed_orders_and_non_partials():
    a = gg.norm_partials([np.ones(3)], 2.0)
    b = gg.norm_partials([np.ones(3)], 1.0)
    with pytest.raises(ValueError, match="different ord"):
        gg.combine_norm_partials([a, b])
    with pytest.raises(TypeError, match="NormPartials"):
        gg.combine_norm_partials([a, 3.0])
    assert gg.combine_norm_partials([]) == 0.0
    with pytest.raises(ValueError, match="ord"):
        gg.norm_partials([np.ones(3)], -1.0)
