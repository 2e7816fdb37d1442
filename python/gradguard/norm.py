"""Layer norm and RMS norm over the last axis: forward (optionally fused with
a residual add, the pre-norm transformer block) and backward. The C++ core
does the work, rows in parallel with the GIL released; this module checks
arguments, allocates outputs and converts weights to the compute type."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Real, real

__all__ = ["layer_norm", "layer_norm_backward", "rms_norm", "rms_norm_backward"]


def _check_float_array(value, argument):
    _core.float_dtype(value, argument)  # TypeError naming the argument unless a supported float array
    return value


def _compute_dtype(dtype):
    """float64 for float64 tensors, float32 for the others (statistics and arithmetic)."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


def _readable(array, dtype=None):
    """A C-contiguous, aligned array with the values of `array` (itself when it already is one).

    np.ascontiguousarray keeps a misaligned contiguous array as it is; the
    kernels need aligned elements, so such an array is copied.
    """
    result = np.ascontiguousarray(array, dtype=dtype)
    return result if result.flags.aligned else result.copy()


def _input(x):
    x = _check_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least one axis (the one normalised)")
    if x.shape[-1] == 0:
        raise ValueError("x's last axis is empty: there is nothing to normalise")
    return _readable(x)  # strided or misaligned inputs are read through a contiguous copy


def _eps(eps):
    return real(eps, "eps", low=0.0, low_open=True, allow_inf=False)


def _affine(value, argument, features, compute):
    """weight/bias as a contiguous vector of the compute dtype, or None."""
    if value is None:
        return None
    _check_float_array(value, argument)
    if value.shape != (features,):
        raise ValueError(f"{argument} must have shape ({features},) to match x's last axis, got {value.shape}")
    return _readable(value, compute)


def _same_as_x(value, argument, x):
    _check_float_array(value, argument)
    if value.shape != x.shape:
        raise ValueError(f"{argument} has shape {value.shape}, x has {x.shape}: they must match")
    if value.dtype != x.dtype:
        raise TypeError(f"{argument} has dtype {value.dtype}, x has {x.dtype}: they must match")
    return _readable(value)


def _output(out, x, inputs, exact_aliases_allowed):
    """The caller's `out`, checked, or a new array like x.

    out may be exactly one of the arrays named in exact_aliases_allowed
    (rows are read before they are written); any other sharing of memory
    with an input is refused, since rows would be overwritten before being read.
    """
    if out is None:
        return np.empty_like(x)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(f"out must have x's shape {x.shape} and dtype {x.dtype}, got {out.shape} {out.dtype}")
    # Writability, contiguity and alignment are checked with the other buffers in the core.
    for name, array in inputs.items():
        if array is None or not np.may_share_memory(out, array):
            continue
        same = (
            name in exact_aliases_allowed
            and array.shape == out.shape
            and array.dtype == out.dtype
            and array.__array_interface__["data"][0] == out.__array_interface__["data"][0]
        )
        if not same:
            allowed = " or ".join(exact_aliases_allowed)
            raise ValueError(f"out overlaps {name}: out may be exactly {allowed}, or share no memory with the inputs")
    return out


def _statistic(value, argument, x):
    """mean / rstd of shape x.shape[:-1] (or with a trailing 1) as the compute dtype."""
    _check_float_array(value, argument)
    rows_shape = x.shape[:-1]
    if value.shape not in (rows_shape, rows_shape + (1,)):
        raise ValueError(f"{argument} must have shape {rows_shape} (one value per row of x), got {value.shape}")
    return _readable(value, _compute_dtype(x.dtype))


def _forward(x, weight, bias, eps, residual, out, return_stats, rms):
    x = _input(x)
    eps = _eps(eps)
    features = x.shape[-1]
    rows = x.size // features
    compute = _compute_dtype(x.dtype)
    weight = _affine(weight, "weight", features, compute)
    bias = None if rms else _affine(bias, "bias", features, compute)
    residual = None if residual is None else _same_as_x(residual, "residual", x)
    y = _output(
        out,
        x,
        {"x": x, "residual": residual, "weight": weight, "bias": bias},
        ("x", "residual") if residual is not None else ("x",),
    )
    residual_sum = np.empty_like(x) if residual is not None else None
    mean = None if rms else np.empty(x.shape[:-1], dtype=compute)
    rstd = np.empty(x.shape[:-1], dtype=compute)
    if rows:
        _core.normalization_forward(
            x,
            residual=residual,
            residual_sum=residual_sum,
            weight=weight,
            bias=bias,
            out=y,
            mean=mean,
            rstd=rstd,
            rows=rows,
            features=features,
            eps=eps,
            rms=rms,
        )
    stats = (rstd,) if rms else (mean, rstd)
    if return_stats:
        return (y, *stats) + ((residual_sum,) if residual is not None else ())
    return (y, residual_sum) if residual is not None else y


def _backward(dy, x, mean, rstd, weight, out, rms):
    x = _input(x)
    dy = _same_as_x(dy, "dy", x)
    features = x.shape[-1]
    rows = x.size // features
    compute = _compute_dtype(x.dtype)
    mean = None if rms else _statistic(mean, "mean", x)
    rstd = _statistic(rstd, "rstd", x)
    weight_dtype = None if weight is None else weight.dtype if isinstance(weight, np.ndarray) else None
    weight = _affine(weight, "weight", features, compute)
    dx = _output(out, x, {"x": x, "dy": dy, "mean": mean, "rstd": rstd, "weight": weight}, ("x", "dy"))
    dweight = np.zeros(features, dtype=np.float64) if weight is not None else None
    dbias = np.zeros(features, dtype=np.float64) if (weight is not None and not rms) else None
    if rows:
        _core.normalization_backward(
            dy,
            x,
            mean=mean,
            rstd=rstd,
            weight=weight,
            dx=dx,
            dweight=dweight,
            dbias=dbias,
            rows=rows,
            features=features,
            rms=rms,
        )
    if weight is None:
        return (dx, None) if rms else (dx, None, None)
    dweight = dweight.astype(weight_dtype)
    return (dx, dweight) if rms else (dx, dweight, dbias.astype(weight_dtype))


def layer_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: Real = 1e-5,
    *,
    residual: Optional[np.ndarray] = None,
    out: Optional[np.ndarray] = None,
    return_stats: bool = False,
) -> Union[np.ndarray, tuple]:
    """Layer normalisation over the last axis, as torch.nn.functional.layer_norm:

        residual_sum = x + residual              (when residual is given; rounded to x's dtype)
        s    = residual_sum, or x without a residual
        mean = sum_j s_j / F,   var = sum_j (s_j - mean)^2 / F      (biased), per row
        rstd = 1 / sqrt(var + eps)
        y    = (s - mean) * rstd * weight + bias

    Statistics are taken in float64 and the output pass runs in float32
    (float64 for float64 input); y has x's dtype, mean/rstd are float32
    (float64 for float64 x), with shape x.shape[:-1].

    Args:
        x: (..., F) array of float32, float64, float16 or bfloat16.
        weight, bias: None or arrays of shape (F,), any float dtype.
        eps: > 0.
        residual: None or an array like x: the pre-norm transformer block's
            residual_sum = x + residual is normalised in the same pass and returned.
        out: an array like x to write y into (it may be x itself).
        return_stats: also return mean and rstd (for layer_norm_backward).

    Returns:
        y; (y, residual_sum) with residual; (y, mean, rstd) with return_stats;
        and (y, mean, rstd, residual_sum) with both.
    """
    return _forward(x, weight, bias, eps, residual, out, return_stats, rms=False)


def rms_norm(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    eps: Real = 1e-6,
    *,
    residual: Optional[np.ndarray] = None,
    out: Optional[np.ndarray] = None,
    return_stats: bool = False,
) -> Union[np.ndarray, tuple]:
    """RMS normalisation over the last axis, as torch.nn.functional.rms_norm:

        s    = residual_sum = x + residual       (when residual is given; else s = x)
        rstd = 1 / sqrt(sum_j s_j^2 / F + eps)
        y    = s * rstd * weight

    Same dtypes, `out` and `residual` conventions as layer_norm. Returns y;
    (y, residual_sum) with residual; (y, rstd) with return_stats;
    (y, rstd, residual_sum) with both.
    """
    return _forward(x, weight, None, eps, residual, out, return_stats, rms=True)


def layer_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray] = None,
    *,
    out: Optional[np.ndarray] = None,
) -> tuple:
    """Gradients of layer_norm (x is what was normalised: s when a residual was fused).

        xhat = (x - mean) * rstd,  g = dy * weight
        dx      = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat))
        dweight = sum_rows dy * xhat,   dbias = sum_rows dy

    dweight/dbias are reduced over rows in a fixed order (float32 partial sums
    over at most 64 row chunks, added in float64), so they do not depend on
    the thread count. Returns (dx, dweight, dbias); the last two are None when
    weight is None, and otherwise have weight's dtype. `out`: an array like x
    to write dx into (it may be dy or x itself).
    """
    return _backward(dy, x, mean, rstd, weight, out, rms=False)


def rms_norm_backward(
    dy: np.ndarray,
    x: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray] = None,
    *,
    out: Optional[np.ndarray] = None,
) -> tuple:
    """Gradients of rms_norm:

        xhat = x * rstd,  g = dy * weight
        dx      = rstd * (g - xhat * mean_j(g * xhat))
        dweight = sum_rows dy * xhat

    Returns (dx, dweight); dweight is None when weight is None. `out`: an array
    like x to write dx into (it may be dy or x itself).
    """
    return _backward(dy, x, None, rstd, weight, out, rms=True)
