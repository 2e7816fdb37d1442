"""Layer norm and RMS norm: forward and backward against the float64 NumPy
reference, finite differences and torch, on every SIMD target."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import random_array
from gradguard import reference

# Feature sizes straddling vector widths, the 16-vector summation span and
# the 32 KiB row groups; 65536 is the largest the issue asks for.
FEATURES = [1, 2, 7, 8, 9, 16, 31, 33, 127, 128, 129, 768, 1000, 4096, 8193, 65536]
# Output tolerance per dtype: one rounding of the output dtype, plus float32 arithmetic.
OUTPUT_RTOL = {"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}


def as64(array):
    return np.asarray(array, dtype=np.float64)


def assert_close(actual, expected, dtype, scale=1.0):
    rtol = OUTPUT_RTOL[np.dtype(dtype).name]
    np.testing.assert_allclose(as64(actual), as64(expected), rtol=rtol, atol=rtol * scale)


@pytest.fixture
def rows_for():
    return lambda features: max(1, min(37, 200_000 // features))


@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_forward(simd_target, dtype, features, affine, rng, rows_for):
    x = random_array(rng, (rows_for(features), features), dtype, scale=3) + dtype.type(1)
    weight = random_array(rng, features, dtype) if affine else None
    bias = random_array(rng, features, dtype) if affine else None
    y, mean, rstd = gg.layer_norm(x, weight, bias, return_stats=True)
    expected, expected_mean, expected_rstd, _ = reference.layer_norm(x, weight, bias)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == rstd.dtype == (np.float64 if dtype == np.float64 else np.float32)
    scale = np.abs(expected).max()
    assert_close(y, expected, dtype, scale)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6, atol=1e-6 * np.abs(expected_mean).max())
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-5)


@pytest.mark.parametrize("features", FEATURES)
def test_rms_norm_forward(simd_target, dtype, features, rng, rows_for):
    x = random_array(rng, (rows_for(features), features), dtype, scale=2)
    weight = random_array(rng, features, dtype)
    y, rstd = gg.rms_norm(x, weight, return_stats=True)
    expected, expected_rstd, _ = reference.rms_norm(x, weight)
    assert_close(y, expected, dtype, np.abs(expected).max())
    np.testing.assert_allclose(rstd, expected_rstd, rtol=1e-5)


# 4096: rows long enough that the backward takes them in pairs (the kernel's
# kPairRowBytes); the others, one at a time (8193: rows not vector-aligned).
BACKWARD_FEATURES = [1, 9, 128, 1000, 4096, 8193]


@pytest.mark.parametrize("features", BACKWARD_FEATURES)
def test_layer_norm_backward(simd_target, dtype, features, rng, rows_for):
    rows = rows_for(features)
    x = random_array(rng, (rows, features), dtype)
    dy = random_array(rng, (rows, features), dtype)
    weight = random_array(rng, features, dtype)
    _, mean, rstd = gg.layer_norm(x, weight, return_stats=True)
    dx, dweight, dbias = gg.layer_norm_backward(dy, x, mean, rstd, weight)
    expected_dx, expected_dweight, expected_dbias = reference.layer_norm_backward(dy, x, mean, rstd, weight)
    assert dx.dtype == x.dtype and dweight.dtype == weight.dtype
    # dx's rounding is relative to its terms rstd * dy * weight, not to dx
    # itself (exactly 0 for one feature).
    dx_scale = np.abs(as64(dy) * as64(weight) * as64(rstd)[:, None]).max()
    assert_close(dx, expected_dx, dtype, dx_scale)
    assert_close(dweight, expected_dweight, dtype, np.abs(expected_dweight).max())
    assert_close(dbias, expected_dbias, dtype, np.abs(expected_dbias).max())
    dx_only = gg.layer_norm_backward(dy, x, mean, rstd)
    assert dx_only[1] is None and dx_only[2] is None


@pytest.mark.parametrize("features", BACKWARD_FEATURES)
def test_rms_norm_backward(simd_target, dtype, features, rng, rows_for):
    rows = rows_for(features)
    x = random_array(rng, (rows, features), dtype)
    dy = random_array(rng, (rows, features), dtype)
    weight = random_array(rng, features, dtype)
    _, rstd = gg.rms_norm(x, weight, return_stats=True)
    dx, dweight = gg.rms_norm_backward(dy, x, rstd, weight)
    expected_dx, expected_dweight = reference.rms_norm_backward(dy, x, rstd, weight)
    dx_scale = np.abs(as64(dy) * as64(weight) * as64(rstd)[:, None]).max()
    assert_close(dx, expected_dx, dtype, dx_scale)
    assert_close(dweight, expected_dweight, dtype, np.abs(expected_dweight).max())


def _finite_difference(function, x, direction, step=1e-6):
    return (function(x + step * direction) - function(x - step * direction)) / (2 * step)


@pytest.mark.parametrize("rms", [False, True])
def test_backward_matches_finite_differences(simd_target, rms, rng):
    x = rng.standard_normal((4, 23))
    weight = rng.standard_normal(23)
    bias = rng.standard_normal(23)
    dy = rng.standard_normal((4, 23))

    def loss_of_x(values):
        y = gg.rms_norm(values, weight) if rms else gg.layer_norm(values, weight, bias)
        return float(np.sum(y * dy))

    def loss_of_weight(values):
        y = gg.rms_norm(x, values) if rms else gg.layer_norm(x, values, bias)
        return float(np.sum(y * dy))

    if rms:
        _, rstd = gg.rms_norm(x, weight, return_stats=True)
        dx, dweight = gg.rms_norm_backward(dy, x, rstd, weight)
    else:
        _, mean, rstd = gg.layer_norm(x, weight, bias, return_stats=True)
        dx, dweight, dbias = gg.layer_norm_backward(dy, x, mean, rstd, weight)
        np.testing.assert_allclose(dbias, dy.sum(axis=0), rtol=1e-12)
    for _ in range(3):
        direction = rng.standard_normal(x.shape)
        assert np.sum(dx * direction) == pytest.approx(_finite_difference(loss_of_x, x, direction), rel=1e-6)
        direction = rng.standard_normal(weight.shape)
        assert np.sum(dweight * direction) == pytest.approx(
            _finite_difference(loss_of_weight, weight, direction), rel=1e-6
        )


def test_residual_is_fused_and_returned(simd_target, dtype, rng):
    x = random_array(rng, (6, 200), dtype)
    residual = random_array(rng, (6, 200), dtype)
    weight, bias = random_array(rng, 200, dtype), random_array(rng, 200, dtype)
    y, s = gg.layer_norm(x, weight, bias, residual=residual)
    np.testing.assert_array_equal(
        as64(s),
        as64(
            (
                x.astype(np.float32 if dtype != np.float64 else np.float64)
                + residual.astype(np.float32 if dtype != np.float64 else np.float64)
            ).astype(dtype)
        ),
    )
    np.testing.assert_array_equal(as64(y), as64(gg.layer_norm(s, weight, bias)))
    y_rms, rstd, s_rms = gg.rms_norm(x, weight, residual=residual, return_stats=True)
    np.testing.assert_array_equal(as64(s_rms), as64(s))
    np.testing.assert_array_equal(as64(y_rms), as64(gg.rms_norm(s, weight)))


def test_out_buffer_and_in_place(simd_target, rng):
    x = rng.standard_normal((10, 64)).astype(np.float32)
    expected = gg.layer_norm(x)
    out = np.empty_like(x)
    assert gg.layer_norm(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    gg.layer_norm(x, out=x)  # y over its own input
    np.testing.assert_array_equal(x, expected)
    with pytest.raises(ValueError, match="out overlaps x"):
        gg.layer_norm(x[:, :32].copy().reshape(10, 32), out=None)  # fine
        buffer = np.zeros(700, np.float32)
        gg.layer_norm(buffer[:640].reshape(10, 64), out=buffer[4:644].reshape(10, 64))
    dy = rng.standard_normal((10, 64)).astype(np.float32)
    _, mean, rstd = gg.layer_norm(x, return_stats=True)
    expected_dx = gg.layer_norm_backward(dy, x, mean, rstd)[0]
    gg.layer_norm_backward(dy, x, mean, rstd, out=dy)  # dx over dy
    np.testing.assert_array_equal(dy, expected_dx)


# Outputs of 16 MiB and more are written with streaming stores, whole cache
# lines only (the line two rows share is held until the second row completes
# it; a part no row completes takes ordinary stores), and with ordinary stores
# where the inputs' loads would trail them closely modulo 4 KiB (4K aliasing).
# Each placement must give the same answers and write nothing outside `out`.
# 24 features: rows under two lines, which share lines without the carry.
STREAMED_BYTES = 16 << 20


@pytest.mark.parametrize("features", [24, 128, 1000, 4096])
def test_streamed_output_wherever_out_lies(simd_target, features):
    rng = np.random.default_rng(features)
    rows = -(-STREAMED_BYTES // (4 * features))
    x = rng.standard_normal((rows, features)).astype(np.float32)
    dy = rng.standard_normal((rows, features)).astype(np.float32)
    weight = rng.standard_normal(features).astype(np.float32)
    bias = rng.standard_normal(features).astype(np.float32)
    expected_y, mean, rstd, _ = reference.layer_norm(x, weight, bias)
    mean, rstd = mean.astype(np.float32), rstd.astype(np.float32)  # the statistics the backward is given
    expected_dx, expected_dweight, _ = reference.layer_norm_backward(dy, x, mean, rstd, weight)
    dweight_scale = np.abs(as64(dy) * (as64(x) - mean[:, None]) * rstd[:, None]).sum(axis=0).max()
    buffer = np.empty(x.size + 1024 + 16, np.float32)
    line_start = (-buffer.ctypes.data // 4) % 16  # the first element on a 64-byte boundary
    starts = [line_start + offset_bytes // 4 for offset_bytes in (0, 4, 16, 32, 48, 60)]
    # Just past x (and dy: both were allocated alike) modulo 4 KiB, and far from it.
    page_offset = (x.ctypes.data - buffer.ctypes.data) % 4096
    starts += [(page_offset + distance) % 4096 // 4 for distance in (64, 192, 2048)]
    outside = np.ones(buffer.size, bool)
    for start in starts:
        out = buffer[start : start + x.size].reshape(x.shape)
        outside[:] = True
        outside[start : start + x.size] = False
        buffer.fill(-7.0)
        out.fill(np.nan)
        assert gg.layer_norm(x, weight, bias, out=out) is out
        assert_close(out, expected_y, np.float32, np.abs(expected_y).max())
        out.fill(np.nan)
        dx, dweight, _ = gg.layer_norm_backward(dy, x, mean, rstd, weight, out=out)
        assert dx is out
        assert_close(dx, expected_dx, np.float32, np.abs(dy * weight * rstd[:, None]).max())
        assert_close(dweight, expected_dweight, np.float32, dweight_scale)
        assert (buffer[outside] == -7.0).all()


def test_constant_rows_huge_and_tiny_magnitudes(simd_target):
    constant = np.full((3, 100), 7.0, np.float32)
    y, mean, rstd = gg.layer_norm(constant, return_stats=True)
    np.testing.assert_array_equal(y, 0.0)
    np.testing.assert_allclose(rstd, 1 / math.sqrt(1e-5), rtol=1e-6)
    rng = np.random.default_rng(5)
    for scale in (1e30, 1e-30, 3e37):  # squares overflow float32; tiny ones underflow below eps
        x = (rng.standard_normal((4, 300)) * scale).astype(np.float32)
        np.testing.assert_allclose(gg.layer_norm(x), reference.layer_norm(x)[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gg.rms_norm(x), reference.rms_norm(x)[0], rtol=1e-4, atol=1e-4)
    # one feature dwarfing the rest (massive activations): two-pass statistics stay exact
    x = rng.standard_normal((2, 4096)).astype(np.float32)
    x[:, 0] = 1e6
    np.testing.assert_allclose(gg.layer_norm(x), reference.layer_norm(x)[0], rtol=1e-4, atol=1e-4)


def test_nan_stays_in_its_row(simd_target):
    x = np.random.default_rng(1).standard_normal((5, 130)).astype(np.float32)
    x[2, 77] = np.nan
    y = gg.layer_norm(x)
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    dy = np.ones_like(x)
    _, mean, rstd = gg.layer_norm(x, return_stats=True)
    dx = gg.layer_norm_backward(dy, x, mean, rstd)[0]
    assert np.isnan(dx[2]).all() and np.isfinite(np.delete(dx, 2, axis=0)).all()


def test_leading_shapes_and_strided_input(simd_target, rng):
    x = rng.standard_normal((2, 3, 4, 50)).astype(np.float32)
    y, mean, rstd = gg.layer_norm(x, return_stats=True)
    assert y.shape == x.shape and mean.shape == rstd.shape == (2, 3, 4)
    np.testing.assert_allclose(y, reference.layer_norm(x)[0], rtol=1e-5, atol=1e-5)
    base = rng.standard_normal((50, 80)).astype(np.float32)
    view = base[::2, 5:65]  # strided rows, partial columns: read through a copy
    np.testing.assert_allclose(gg.layer_norm(view), reference.layer_norm(view)[0], rtol=1e-5, atol=1e-5)
    dx = gg.layer_norm_backward(view, view, *gg.layer_norm(view, return_stats=True)[1:])[0]
    np.testing.assert_allclose(
        dx, reference.layer_norm_backward(view, view, *reference.layer_norm(view)[1:3])[0], rtol=1e-4, atol=1e-5
    )
    assert gg.layer_norm(np.zeros((0, 8), np.float32)).shape == (0, 8)


def test_weight_gradients_do_not_depend_on_threads(rng):
    x = rng.standard_normal((3000, 96)).astype(np.float32)
    dy = rng.standard_normal((3000, 96)).astype(np.float32)
    weight = rng.standard_normal(96).astype(np.float32)
    _, mean, rstd = gg.layer_norm(x, weight, return_stats=True)
    before = gg.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            gg.set_num_threads(threads)
            results.append(gg.layer_norm_backward(dy, x, mean, rstd, weight))
    finally:
        gg.set_num_threads(before)
    for dx, dweight, dbias in results[1:]:
        assert dx.tobytes() == results[0][0].tobytes()
        assert dweight.tobytes() == results[0][1].tobytes() and dbias.tobytes() == results[0][2].tobytes()


def test_fp32_weights_with_half_activations(rng):
    x = random_array(rng, (8, 64), np.float16)
    weight = rng.standard_normal(64).astype(np.float32)
    y = gg.layer_norm(x, weight)
    assert y.dtype == np.float16
    assert_close(y, reference.layer_norm(x, weight)[0], np.float16, 4)
    _, mean, rstd = gg.layer_norm(x, weight, return_stats=True)
    assert gg.layer_norm_backward(x, x, mean, rstd, weight)[1].dtype == np.float32


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda x, w: gg.layer_norm(x, w[:5]), ValueError, "weight must have shape"),
        (lambda x, w: gg.layer_norm(x, w, w[:3]), ValueError, "bias must have shape"),
        (lambda x, w: gg.layer_norm(x, eps=0.0), ValueError, "eps"),
        (lambda x, w: gg.rms_norm(x, eps=math.nan), ValueError, "eps"),
        (lambda x, w: gg.layer_norm(x.astype(np.int32)), TypeError, "x has dtype int32"),
        (lambda x, w: gg.layer_norm(x, w.astype(np.int64)), TypeError, "weight has dtype int64"),
        (lambda x, w: gg.layer_norm(x, residual=x[:2]), ValueError, "residual has shape"),
        (lambda x, w: gg.layer_norm(x, residual=x.astype(np.float64)), TypeError, "residual has dtype"),
        (lambda x, w: gg.layer_norm(x, out=np.empty((3, 3), np.float32)), ValueError, "out must have"),
        (lambda x, w: gg.layer_norm_backward(x[:2], x, np.zeros(4), np.ones(4)), ValueError, "dy has shape"),
        (lambda x, w: gg.layer_norm_backward(x, x, np.zeros(3), np.ones(4)), ValueError, "mean must have shape"),
        (lambda x, w: gg.rms_norm_backward(x, x, np.ones(5)), ValueError, "rstd must have shape"),
        (lambda x, w: gg.layer_norm([[1.0, 2.0]]), TypeError, "x must be a NumPy array"),
        (lambda x, w: gg.layer_norm(np.float32(3.0)), TypeError, "x must be a NumPy array"),
        (lambda x, w: gg.layer_norm(np.zeros((4, 0), np.float32)), ValueError, "last axis is empty"),
    ],
)
def test_bad_input_names_the_argument(call, error, words):
    x = np.ones((4, 10), np.float32)
    weight = np.ones(10, np.float32)
    with pytest.raises(error, match=words):
        call(x, weight)


def test_read_only_out_is_refused():
    x = np.ones((4, 10), np.float32)
    out = np.empty_like(x)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        gg.layer_norm(x, out=out)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("features", [1, 7, 768, 4100])
def test_matches_torch_forward_and_autograd(features):
    torch = _torch()
    rng = np.random.default_rng(7)
    rows = 33
    x = rng.standard_normal((rows, features)).astype(np.float32)
    weight = rng.standard_normal(features).astype(np.float32)
    bias = rng.standard_normal(features).astype(np.float32)
    dy = rng.standard_normal((rows, features)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(weight, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    ty = torch.nn.functional.layer_norm(tx, (features,), tw, tb, eps=1e-5)
    ty.backward(torch.from_numpy(dy))
    y, mean, rstd = gg.layer_norm(x, weight, bias, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    dx, dweight, dbias = gg.layer_norm_backward(dy, x, mean, rstd, weight)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dweight, tw.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbias, tb.grad.numpy(), rtol=1e-4, atol=1e-3)

    tx.grad = None
    tw.grad = None
    ty = torch.nn.functional.rms_norm(tx, (features,), tw, eps=1e-6)
    ty.backward(torch.from_numpy(dy))
    y, rstd = gg.rms_norm(x, weight, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
    dx, dweight = gg.rms_norm_backward(dy, x, rstd, weight)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dweight, tw.grad.numpy(), rtol=1e-4, atol=1e-3)
