"""gg.global_norm against the float64 NumPy reference, on every SIMD target."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16, DTYPES, NORM_RTOL, SIZES, random_array
from gradguard import reference

ORDS = [2.0, 1.0, math.inf, 3.0, 0.5]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("ord", ORDS)
def test_matches_reference(simd_target, dtype, size, ord, rng):
    arrays = [random_array(rng, size, dtype), random_array(rng, (3, 5), dtype)]
    expected = reference.global_norm(arrays, ord)
    assert gg.global_norm(arrays, ord=ord) == pytest.approx(expected, rel=NORM_RTOL[dtype.name], abs=0)


def test_mixed_dtypes_and_dict(simd_target, rng):
    arrays = {f"a{i}": random_array(rng, 1000 + i, d) for i, d in enumerate(DTYPES)}
    expected = reference.global_norm(list(arrays.values()))
    assert gg.global_norm(arrays) == pytest.approx(expected, rel=1e-6)


def test_empty_inputs(simd_target):
    assert gg.global_norm([]) == 0.0
    assert gg.global_norm({}) == 0.0
    assert gg.global_norm([np.zeros(0, np.float32), np.zeros((0, 3))]) == 0.0
    assert gg.global_norm([np.zeros(10, np.float16)], ord=math.inf) == 0.0


def test_fp16_never_overflows(simd_target):
    # torch's fp16 norm of these is inf: the squares do not fit in fp16.
    gradient = np.full((4096,), 60000.0, dtype=np.float16)
    assert gg.global_norm([gradient]) == pytest.approx(60000.0 * 64.0, rel=1e-12)
    if BFLOAT16 is not None:
        big = np.full(1000, 3e38, dtype=BFLOAT16)
        assert gg.global_norm([big]) == pytest.approx(float(big[0]) * math.sqrt(1000), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("ord", ORDS)
def test_nan_beats_inf(simd_target, dtype, ord):
    finite = np.ones(100, dtype)
    with_inf = np.ones(37, dtype)
    with_inf[20] = -np.inf
    with_nan = np.ones(1000, dtype)
    with_nan[999] = np.nan
    assert gg.global_norm([finite, with_inf], ord=ord) == math.inf
    assert math.isnan(gg.global_norm([finite, with_inf, with_nan], ord=ord))
    assert math.isnan(gg.global_norm([with_nan], ord=ord))


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e300, 1e-310])
@pytest.mark.parametrize("ord", [2.0, 1.0, 3.0])
def test_float64_extremes_are_rescaled(simd_target, scale, ord, rng):
    arrays = [rng.standard_normal(1000) * scale, rng.standard_normal(10) * scale]
    expected = reference.global_norm(arrays, ord)
    assert math.isfinite(expected) and expected > 0
    assert gg.global_norm(arrays, ord=ord) == pytest.approx(expected, rel=1e-9)


def test_tiny_tensor_next_to_huge_one(simd_target):
    # Each tensor is rescaled by its own maximum, so the tiny one keeps its digits.
    huge, tiny = np.full(10, 1e200), np.full(10, 1e-200)
    assert gg.global_norm([huge, tiny]) == pytest.approx(1e200 * math.sqrt(10), rel=1e-12)
    norms = gg.clip_by_norm([huge.copy(), tiny.copy()], math.inf)
    np.testing.assert_allclose(norms, [1e200 * math.sqrt(10), 1e-200 * math.sqrt(10)], rtol=1e-12)


def test_large_p_overflows_float64_only_without_rescaling(simd_target):
    values = np.full(100, 1e30, dtype=np.float32)  # (1e30)^12 overflows float64
    assert gg.global_norm([values], ord=12) == pytest.approx(float(values[0]) * 100 ** (1 / 12), rel=1e-9)


def test_float32_sum_is_accurate_at_scale(simd_target):
    # 2^24 + 1 ones: float32 accumulation would stop at 2^24.
    ones = np.ones(2**24 + 1, np.float32)
    assert gg.global_norm([ones], ord=1) == 2**24 + 1
    assert gg.global_norm([ones]) == pytest.approx(math.sqrt(2**24 + 1), rel=1e-15)


def test_thread_count_does_not_change_the_result(rng):
    arrays = [random_array(rng, n, np.float32) for n in (3, 70_001, 1_000_003, 64)]
    before = gg.get_num_threads()
    try:
        results = set()
        for threads in (1, 2, 3, 5):
            gg.set_num_threads(threads)
            results.add(gg.global_norm(arrays))
            results.add(tuple(gg.grad_stats(arrays).std))
        assert len(results) == 2  # one norm, one std tuple: bitwise identical
    finally:
        gg.set_num_threads(before)


def test_strided_views_are_read_correctly(simd_target, rng):
    base = random_array(rng, (300, 40), np.float32)
    views = [base[::3], base.T, base[:, 5], base[::-1, ::2]]
    expected = reference.global_norm([np.ascontiguousarray(v) for v in views])
    assert gg.global_norm(views) == pytest.approx(expected, rel=1e-6)


def test_torch_agrees():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    arrays = [random_array(rng, n, np.float32) for n in (10, 1000, 100_000)]
    for ord in (2.0, 1.0, math.inf, 3.0):
        expected = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(torch.from_numpy(a).double(), ord) for a in arrays]), ord
        )
        assert gg.global_norm(arrays, ord=ord) == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("ord", [50.0, 2000.0, 1e5])
def test_large_orders_rescale(simd_target, ord):
    values = np.random.default_rng(3).uniform(0.5, 4.0, 1000).astype(np.float32)
    expected = reference.global_norm([values], ord)
    assert gg.global_norm([values], ord=ord) == pytest.approx(expected, rel=1e-6)
    clipped = values.copy()
    gg.clip_by_global_norm([clipped], 1e9, ord=ord)
    np.testing.assert_array_equal(clipped, values)  # far below the bound: untouched, not zeroed
