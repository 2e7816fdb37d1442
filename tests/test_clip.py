"""Clipping against the NumPy reference and torch.nn.utils, on every SIMD target."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16, SIZES, random_array
from gradguard import reference


def assert_same(actual, expected, dtype):
    """Equal up to one rounding of the array's dtype (the coefficient is float64 vs float32)."""
    tolerance = {"float64": 1e-14, "float32": 2e-7, "float16": 1e-3, "bfloat16": 8e-3}[np.dtype(dtype).name]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64), rtol=tolerance, atol=0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ord", [2.0, 1.0, math.inf])
def test_clip_by_global_norm_matches_reference(simd_target, dtype, size, ord, rng):
    arrays = [random_array(rng, size, dtype), random_array(rng, (7, 3), dtype, scale=10)]
    original = [a.copy() for a in arrays]
    expected_total, expected = reference.clip_by_global_norm(original, 0.5, ord=ord)
    total = gg.clip_by_global_norm(arrays, 0.5, ord=ord)
    assert total == pytest.approx(expected_total, rel=1e-6)
    for actual, wanted in zip(arrays, expected):
        assert_same(actual, wanted, dtype)


def test_no_clipping_leaves_arrays_bit_identical(simd_target, dtype, rng):
    arrays = [random_array(rng, 1000, dtype)]
    before = arrays[0].copy()
    report = gg.clip_by_global_norm(arrays, 1e6, return_report=True)
    assert not report.clipped and report.clip_coef == 1.0
    assert arrays[0].tobytes() == before.tobytes()


def test_report(simd_target, rng):
    arrays = {"w": random_array(rng, 100, np.float32), "b": random_array(rng, 10, np.float32)}
    total_before = gg.global_norm(arrays)
    report = gg.clip_by_global_norm(arrays, 1.0, return_report=True)
    assert isinstance(report, gg.ClipReport)
    assert report.total_norm == total_before and report.clipped and report.max_norm == 1.0
    assert report.clip_coef == pytest.approx(1.0 / (total_before + 1e-6))
    assert report.nonfinite == ()
    assert gg.global_norm(arrays) == pytest.approx(1.0, rel=1e-5)


def test_report_names_nonfinite_arrays(simd_target):
    arrays = {
        "ok": np.ones(10, np.float32),
        "has_nan": np.array([1, np.nan], np.float32),
        "has_inf": np.array([np.inf, 1], np.float16),
    }
    listed_copies = [a.copy() for a in arrays.values()]
    report = gg.clip_by_global_norm(arrays, 1.0, return_report=True)
    assert math.isnan(report.total_norm) and report.nonfinite == ("has_nan", "has_inf")
    listed = gg.clip_by_global_norm(listed_copies, 1.0, return_report=True)
    assert listed.nonfinite == (1, 2)


def test_error_if_nonfinite_changes_nothing(simd_target):
    arrays = {"layer.0": np.full(10, 3.0, np.float32), "layer.1": np.array([1.0, np.inf], np.float32)}
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(FloatingPointError, match=r"arrays\[1\] \('layer.1'\)"):
        gg.clip_by_global_norm(arrays, 1.0, error_if_nonfinite=True)
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], before[key])


def test_nonfinite_without_error_behaves_like_torch(simd_target):
    # inf total: coefficient 0, finite entries become 0 and inf becomes NaN.
    arrays = [np.array([1.0, -2.0], np.float32), np.array([np.inf, 3.0], np.float32)]
    assert gg.clip_by_global_norm(arrays, 1.0) == math.inf
    np.testing.assert_array_equal(arrays[0], [0.0, -0.0])
    assert math.isnan(arrays[1][0]) and arrays[1][1] == 0.0
    # NaN total: the coefficient is NaN and every array becomes NaN.
    arrays = [np.array([1.0, np.nan], np.float32), np.ones(3, np.float64)]
    assert math.isnan(gg.clip_by_global_norm(arrays, 1.0))
    assert np.isnan(arrays[0]).all() and np.isnan(arrays[1]).all()


def test_eps_zero_is_tensorflow_and_optax(simd_target, rng):
    arrays = [random_array(rng, 100, np.float64)]
    original = arrays[0].copy()
    total = np.linalg.norm(original)
    gg.clip_by_global_norm(arrays, 1.0, eps=0.0)
    np.testing.assert_allclose(arrays[0], original * 1.0 / max(total, 1.0), rtol=1e-15)


def test_zero_gradients_and_zero_bound(simd_target):
    arrays = [np.zeros(5, np.float32)]
    assert gg.clip_by_global_norm(arrays, 0.0, eps=0.0) == 0.0
    np.testing.assert_array_equal(arrays[0], 0.0)
    arrays = [np.ones(5, np.float32)]
    gg.clip_by_global_norm(arrays, 0.0)
    np.testing.assert_array_equal(arrays[0], 0.0)


@pytest.mark.parametrize("size", [0, 1, 17, 65537])
def test_clip_by_norm_matches_reference(simd_target, dtype, size, rng):
    arrays = [random_array(rng, size, dtype, scale=3), random_array(rng, 40, dtype, scale=0.01)]
    expected_norms, expected = reference.clip_by_norm([a.copy() for a in arrays], 1.0)
    norms = gg.clip_by_norm(arrays, 1.0)
    np.testing.assert_allclose(norms, expected_norms, rtol=1e-6)
    for actual, wanted in zip(arrays, expected):
        assert_same(actual, wanted, dtype)


def test_clip_by_norm_is_tf_clip_by_norm_with_eps_zero(simd_target, rng):
    tensor = random_array(rng, 50, np.float64)
    original = tensor.copy()
    gg.clip_by_norm([tensor], 0.7, eps=0.0)
    np.testing.assert_allclose(tensor, original * 0.7 / max(np.linalg.norm(original), 0.7), rtol=1e-15)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000])
def test_clip_by_value_matches_reference(simd_target, dtype, size, rng):
    arrays = [random_array(rng, size, dtype, scale=2)]
    if size:
        arrays[0][0] = np.nan
    expected = reference.clip_by_value([a.copy() for a in arrays], -0.3, 0.3)
    gg.clip_by_value(arrays, 0.3)
    # compared as float64 so NaN positions count as equal for every dtype
    np.testing.assert_array_equal(arrays[0].astype(np.float64), expected[0].astype(np.float64))
    asymmetric = [random_array(rng, size, dtype, scale=2)]
    expected = reference.clip_by_value([a.copy() for a in asymmetric], -1.0, math.inf)
    gg.clip_by_value(asymmetric, min_value=-1.0)
    np.testing.assert_array_equal(asymmetric[0].astype(np.float64), expected[0].astype(np.float64))


def _every_bit_pattern(dtype):
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype)


@pytest.mark.parametrize("factor", [0.7, 1.0 / 3.0, 1e-3, 2.0**-20, 1e-8])
def test_scaling_rounds_every_fp16_pattern_like_numpy(simd_target, factor):
    values = _every_bit_pattern(np.float16).copy()
    with np.errstate(invalid="ignore"):
        expected = (values.astype(np.float32) * np.float32(factor)).astype(np.float16)
    gg._core.scale([values], factor, None)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(values), nan)
    np.testing.assert_array_equal(values[~nan].view(np.uint16), expected[~nan].view(np.uint16))


def test_reading_every_fp16_pattern(simd_target):
    values = _every_bit_pattern(np.float16)
    finite = values[np.isfinite(values)]
    stats = gg.grad_stats([values])
    assert stats.n_nan[0] == np.isnan(values).sum() and stats.n_inf[0] == 2
    assert stats.min[0] == -65504.0 and stats.max[0] == 65504.0
    assert stats.l2[0] == pytest.approx(np.linalg.norm(finite.astype(np.float64)), rel=1e-6)
    assert gg.global_norm([finite], ord=1) == np.abs(finite.astype(np.float64)).sum()


@pytest.mark.parametrize("factor", [0.7, 1.0 / 3.0, 2.0**-100])
def test_scaling_rounds_every_bfloat16_pattern_like_ml_dtypes(simd_target, factor):
    if BFLOAT16 is None:
        pytest.skip("ml_dtypes is not installed")
    values = _every_bit_pattern(BFLOAT16).copy()
    with np.errstate(invalid="ignore", over="ignore"):
        expected = (values.astype(np.float32) * np.float32(factor)).astype(BFLOAT16)
    gg._core.scale([values], factor, None)
    with np.errstate(invalid="ignore", over="ignore"):
        nan = np.isnan(expected.astype(np.float32))
        np.testing.assert_array_equal(np.isnan(values.astype(np.float32)), nan)
    np.testing.assert_array_equal(values[~nan].view(np.uint16), expected[~nan].view(np.uint16))


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for dtype, torch_dtype in ((np.float32, torch.float32), (np.float64, torch.float64)):
        for ord in (2.0, 1.0, math.inf):
            arrays = [random_array(rng, n, dtype, scale=5) for n in (1, 100, 70_000)]
            parameters = [torch.nn.Parameter(torch.zeros(a.shape, dtype=torch_dtype)) for a in arrays]
            for parameter, array in zip(parameters, arrays):
                parameter.grad = torch.from_numpy(array.copy())
            exact_total = reference.global_norm(arrays, ord)
            expected_total = torch.nn.utils.clip_grad_norm_(parameters, 1.0, norm_type=ord)
            total = gg.clip_by_global_norm(arrays, 1.0, ord=ord)
            # torch accumulates float32 norms in float32 (a few 1e-6 off for 10^5
            # elements) and forms the coefficient in float32; gg uses float64.
            rtol = 2e-5 if dtype == np.float32 else 1e-13
            assert total == pytest.approx(exact_total, rel=1e-9)
            assert total == pytest.approx(float(expected_total), rel=rtol)
            for parameter, array in zip(parameters, arrays):
                np.testing.assert_allclose(array, parameter.grad.numpy(), rtol=rtol, atol=0)


def test_clip_grad_value_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    arrays = [random_array(rng, n, np.float32, scale=3) for n in (5, 1000)]
    arrays[0][2] = np.nan
    parameters = [torch.nn.Parameter(torch.zeros(a.shape)) for a in arrays]
    for parameter, array in zip(parameters, arrays):
        parameter.grad = torch.from_numpy(array.copy())
    torch.nn.utils.clip_grad_value_(parameters, 0.25)
    gg.clip_by_value(arrays, 0.25)
    for parameter, array in zip(parameters, arrays):
        np.testing.assert_array_equal(array, parameter.grad.numpy())


def test_torch_views_are_clipped_in_place():
    torch = pytest.importorskip("torch")
    gradient = torch.full((1000,), 2.0)
    gg.clip_by_global_norm([gradient.numpy()], 1.0)
    assert float(torch.linalg.vector_norm(gradient)) == pytest.approx(1.0, rel=1e-5)
