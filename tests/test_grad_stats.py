"""gg.grad_stats against the float64 NumPy reference, on every SIMD target."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import SIZES, STATS_RTOL, random_array
from gradguard import _core, reference

FLOAT_FIELDS = ("mean", "std", "abs_mean", "l2", "min", "max")
COUNT_FIELDS = ("numel", "n_nan", "n_inf", "n_zero")


def assert_stats_match(stats, expected, dtype, scale=1.0):
    for field in COUNT_FIELDS:
        np.testing.assert_array_equal(getattr(stats, field), expected[field], err_msg=field)
    rtol = STATS_RTOL[np.dtype(dtype).name]
    for field in FLOAT_FIELDS:
        # mean can be ~0: its error is relative to the spread, not to itself.
        atol = rtol * scale if field == "mean" else 0.0
        np.testing.assert_allclose(getattr(stats, field), expected[field], rtol=rtol, atol=atol, err_msg=field)


@pytest.mark.parametrize("size", SIZES)
def test_matches_reference(simd_target, dtype, size, rng):
    arrays = [random_array(rng, size, dtype), random_array(rng, (5, 7), dtype, scale=100)]
    stats = gg.grad_stats(arrays)
    assert_stats_match(stats, reference.grad_stats(arrays), dtype, scale=100)
    assert stats.global_norm == pytest.approx(reference.global_norm(arrays), rel=STATS_RTOL[dtype.name])


@pytest.mark.parametrize("size", [1, 16, 17, 64, 65, 1000, 70_000])
def test_nan_inf_and_zeros_are_counted_not_averaged(simd_target, dtype, size, rng):
    values = random_array(rng, size, dtype)
    positions = rng.permutation(size)
    values[positions[: size // 10]] = 0
    values[positions[size // 10 : size // 5]] = np.nan
    values[positions[size // 5 : size // 5 + size // 20]] = np.inf
    values[positions[-1]] = -np.inf if size > 1 else values[positions[-1]]
    stats = gg.grad_stats({"layer": values})
    assert_stats_match(stats, reference.grad_stats([values]), dtype)
    assert stats.names == ("layer",)
    expected_global = (
        math.nan
        if np.isnan(values.astype(np.float64)).any()
        else (math.inf if np.isinf(values.astype(np.float64)).any() else stats.l2[0])
    )
    assert stats.global_norm == expected_global or (math.isnan(stats.global_norm) and math.isnan(expected_global))


def test_nothing_finite(simd_target):
    stats = gg.grad_stats([np.array([np.nan, np.inf, -np.inf, np.nan], np.float32), np.zeros(0, np.float16)])
    np.testing.assert_array_equal(stats.n_nan, [2, 0])
    np.testing.assert_array_equal(stats.n_inf, [2, 0])
    assert np.isnan(stats.mean).all() and np.isnan(stats.min).all() and np.isnan(stats.std).all()
    np.testing.assert_array_equal(stats.l2, [0.0, 0.0])


def test_first_value_not_finite_still_gives_finite_min_max(simd_target):
    values = np.array([np.inf, np.nan, 3.0, -2.0, 5.0], np.float32)
    stats = gg.grad_stats([values])
    assert (stats.min[0], stats.max[0], stats.mean[0]) == (-2.0, 5.0, 2.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_mean_small_spread_does_not_cancel(simd_target, dtype, rng):
    # |mean| / std = 1e5: sum-of-squares formulas lose every digit of the variance.
    values = (1000.0 + rng.standard_normal(300_000) * 0.01).astype(dtype)
    stats = gg.grad_stats([values])
    exact = values.astype(np.float64)
    assert stats.std[0] == pytest.approx(exact.std(), rel=1e-4 if dtype == np.float32 else 1e-9)
    assert stats.mean[0] == pytest.approx(exact.mean(), rel=1e-9)


def test_row_and_nonfinite_helpers(simd_target):
    stats = gg.grad_stats({"a": np.array([1.0, -1.0], np.float32), "b": np.array([np.nan], np.float64)})
    assert stats.row("a")["abs_mean"] == 1.0 and stats.row(0)["numel"] == 2
    assert stats.nonfinite() == ("b",)
    assert len(stats) == 2 and gg.grad_stats([]).global_norm == 0.0


def test_torch_agrees():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    values = random_array(rng, 100_000, np.float32, scale=0.02)
    tensor = torch.from_numpy(values).double()
    stats = gg.grad_stats([values])
    assert stats.std[0] == pytest.approx(float(tensor.std(unbiased=False)), rel=1e-6)
    assert stats.abs_mean[0] == pytest.approx(float(tensor.abs().mean()), rel=1e-6)
    assert stats.l2[0] == pytest.approx(float(torch.linalg.vector_norm(tensor)), rel=1e-6)


EXTREMES = [
    np.array([3e38, -3e38, 1, 2], np.float32),
    np.concatenate([np.ones(99, np.float32), np.array([2e19], np.float32)]),
    (np.random.default_rng(0).standard_normal(1000) * 1e-38).astype(np.float32),
    np.array([1e-45, -1e-45, 0.0], np.float32),
    np.array([1e300, -1e300, 1.0], np.float64),
    np.array([1e-310, 3e-310], np.float64),
    np.array([65504.0, -65504.0, 1.0], np.float16),
]


@pytest.mark.parametrize("values", EXTREMES, ids=lambda v: f"{v.dtype}-{np.abs(v.astype(np.float64)).max():.0e}")
def test_grad_stats_extreme_values(simd_target, values):
    stats = gg.grad_stats([values])
    expected = reference.grad_stats([values])
    largest = float(np.abs(values.astype(np.float64)).max())
    assert stats.l2[0] == pytest.approx(gg.global_norm([values]), rel=1e-9)
    for field in ("mean", "std", "abs_mean"):
        assert abs(getattr(stats, field)[0] - expected[field][0]) <= 1e-6 * largest, field
    assert stats.n_nan[0] == 0 and stats.n_inf[0] == 0


# float32 pieces take a fast path (float32 sums of x and |x|, widened every
# few terms; the variance from the float64 squares) and fall back to the
# exact one when its error bound would not hold: non-finite values, largest
# |x| below 2^-40, |mean| above the standard deviation. These inputs sit on
# both sides of each fallback rule.
def _float32_inputs():
    rng = np.random.default_rng(11)
    size = 3 * 65536 + 77  # pieces of both paths in one tensor, and a tail
    normal = rng.standard_normal(size)
    outlier_first = normal.copy()
    outlier_first[0] = 1e4
    mixed_tiny = normal.copy()
    mixed_tiny[::3] *= 1e-30
    mixed_tiny[:16] = 1e-30  # a tiny first value beside normal ones
    half_zero = np.where(rng.random(size) < 0.5, 0.0, normal)
    spikes = normal + (rng.random(size) < 0.001) * 1e6
    one_bad_piece = normal.copy()
    one_bad_piece[65536 + 5] = np.nan
    return {
        "normal": normal,
        "outlier-first": outlier_first,
        "max-1e-13": normal * 1e-13,
        "max-1e-11": normal * 1e-11,
        "mixed-tiny": mixed_tiny,
        "offset-1000": 1000 + normal * 0.01,
        "max-1e18": normal * 1e18,
        "max-1e20": normal * 1e20,
        "half-zero": half_zero,
        "cauchy": np.abs(rng.standard_cauchy(size)),
        "lognormal-e10": np.exp(normal * 10),
        "spikes": spikes,
        "one-nan-piece": one_bad_piece,
        "ramp": np.linspace(-1, 1, size) + 5,
        "mean-0.9-std": 0.9 + normal,
        "mean-1.1-std": 1.1 + normal,
        "uniform-0-1": rng.random(size),
    }


FLOAT32_INPUTS = _float32_inputs()


@pytest.mark.parametrize("name", list(FLOAT32_INPUTS))
def test_float32_fast_path_and_its_fallbacks(simd_target, name):
    values = FLOAT32_INPUTS[name].astype(np.float32)
    stats = gg.grad_stats([values])
    expected = reference.grad_stats([values])
    for field in COUNT_FIELDS + ("min", "max"):
        np.testing.assert_array_equal(getattr(stats, field), expected[field], err_msg=field)
    for field in ("std", "abs_mean", "l2"):
        assert getattr(stats, field)[0] == pytest.approx(expected[field][0], rel=STATS_RTOL["float32"]), field
    # The mean's error is relative to the spread (the mean may be ~0).
    assert abs(stats.mean[0] - expected["mean"][0]) <= STATS_RTOL["float32"] * expected["std"][0]
    # The pieces merge and split as the exact path's do: same result per thread count.
    with _threads(1):
        alone = gg.grad_stats([values])
    for field in FLOAT_FIELDS:
        np.testing.assert_array_equal(getattr(alone, field), getattr(stats, field), err_msg=field)


def test_float32_fast_path_is_taken_where_its_bound_holds(simd_target):
    """Which path a float32 piece takes: the fast one (its partial's shift is 0
    and its second moment is the float64 sum of squares, global_norm's) while
    |mean| <= std, the exact one (shift: the piece's first finite value) beyond."""
    normal = np.random.default_rng(5).standard_normal(gg.PIECE_ELEMENTS)
    fields = _core.STATS_PARTIAL_FIELDS
    for offset, fast in ((0.0, True), (0.9, True), (1.1, False), (-1.1, False)):
        values = (normal + offset).astype(np.float32)
        (row,) = gg.stats_partials([values]).values
        assert (row[fields.index("shift")] == 0.0) == fast, offset
        if fast:
            assert row[fields.index("shifted_sumsq")] == row[fields.index("sum_of_squares")]
            assert math.sqrt(row[fields.index("sum_of_squares")]) == gg.global_norm([values])
        else:
            assert row[fields.index("shift")] == values[0]


class _threads:
    def __init__(self, count):
        self.count = count

    def __enter__(self):
        self.before = gg.get_num_threads()
        gg.set_num_threads(self.count)

    def __exit__(self, *exc):
        gg.set_num_threads(self.before)


def test_subnormal_results_survive_a_stats_call(simd_target):
    # The fast path flushes subnormal results while it runs, in the caller's
    # thread and the workers': the mode must be restored everywhere after.
    with _threads(2):
        gg.grad_stats([np.random.default_rng(0).standard_normal(4 * gg.PIECE_ELEMENTS).astype(np.float32)])
        assert np.float32(1e-38) * np.float32(1e-3) != 0
        tiny = np.full(4 * gg.PIECE_ELEMENTS, 1e-30, np.float32)
        gg.clip_with_norm_([tiny], max_norm=1e-10, total_norm=1.0, eps=0.0)  # x * 1e-10 on the workers
        assert (tiny > 0).all() and tiny[0] == pytest.approx(1e-40, rel=1e-2)


def test_ndim_is_each_arrays_number_of_dimensions():
    # The monitor judges a vector's exact zeros apart by it (its dead test).
    arrays = {
        "scalar": np.array(1.0, np.float32),
        "matrix": np.ones((2, 3), np.float32),
        "vector": np.ones(4, np.float16),
        "conv": np.ones((1, 2, 3, 4)),
    }
    stats = gg.grad_stats(arrays)
    np.testing.assert_array_equal(stats.ndim, [0, 2, 1, 4])
    assert stats.ndim.dtype == np.int64 and stats.names == tuple(arrays)
    assert gg.grad_stats(list(arrays.values())).ndim.tolist() == [0, 2, 1, 4]
    # A strided array is read through a contiguous copy: its ndim is still its own.
    assert gg.grad_stats([np.ones((3, 4, 6), np.float32)[:, ::2, 1:]]).ndim.tolist() == [3]
    # Partials carry no shapes: combined statistics leave ndim unknown.
    assert gg.combine_stats_partials([gg.stats_partials(list(arrays.values()))]).ndim is None


def test_global_norm_rule_of_the_columns():
    """GradStats.global_norm from per-array columns, one rule in the core for
    grad_stats, combined partials and device/JAX columns: NaN if any NaN,
    else inf if any inf, else sqrt(sum l2^2) with no square overflowing."""
    from gradguard import _core

    rng = np.random.default_rng(7)
    l2 = rng.uniform(0.0, 3.0, 50) * 10.0 ** rng.integers(-30, 30, 50)
    zeros = np.zeros(50, np.int64)
    expected = math.fsum(value**2 for value in l2) ** 0.5
    assert _core.stats_global_norm(l2, zeros, zeros) == pytest.approx(expected, rel=1e-14)
    # Squares beyond float64 (1e300^2) and below its subnormals (1e-300^2).
    assert _core.stats_global_norm(np.array([1e300, 1e300]), zeros[:2], zeros[:2]) == pytest.approx(2**0.5 * 1e300)
    assert _core.stats_global_norm(np.array([3e-300, 4e-300]), zeros[:2], zeros[:2]) == pytest.approx(5e-300)
    assert _core.stats_global_norm(np.zeros(3), zeros[:3], zeros[:3]) == 0.0
    assert _core.stats_global_norm(np.zeros(0), zeros[:0], zeros[:0]) == 0.0
    assert _core.stats_global_norm(np.array([1.0, math.inf]), zeros[:2], zeros[:2]) == math.inf
    ones = np.ones(2, np.int64)
    assert _core.stats_global_norm(np.array([1.0, 2.0]), zeros[:2], ones) == math.inf
    assert math.isnan(_core.stats_global_norm(np.array([1.0, 2.0]), ones, ones))
    with pytest.raises(ValueError, match="one length"):
        _core.stats_global_norm(np.ones(3), zeros[:2], zeros[:3])
    # grad_stats and combined partials take it from the core as well.
    arrays = [np.full(10, 1e30, np.float32), np.full(7, -2.5, np.float32)]
    stats = gg.grad_stats(arrays)
    assert stats.global_norm == _core.stats_global_norm(stats.l2, stats.n_nan, stats.n_inf)
    big = float(np.float32(1e30))
    assert stats.global_norm == pytest.approx(math.sqrt(10 * big**2 + 7 * 6.25), rel=1e-12)
    combined = gg.combine_stats_partials([gg.stats_partials(arrays)])
    assert combined.global_norm == stats.global_norm
