"""Plain NumPy versions of gradguard's functions: the readable specification
that the tests compare the C++ core against (bottleneck's "slow" module).

Everything is computed in float64 (norms with a max-abs rescaling, so float64
inputs near the overflow threshold are exact too); in-place results are formed
in each dtype's compute type (float32 for 16- and 32-bit arrays, float64 for
float64) and rounded once to the array's dtype, as the core does. They are
slow (several passes, temporaries) and return new arrays instead of writing.
"""

from __future__ import annotations

import math

import numpy as np

from .stats import STATS_FIELDS

__all__ = [
    "compute_dtype",
    "global_norm",
    "tensor_norms",
    "clip_by_global_norm",
    "clip_by_norm",
    "clip_by_value",
    "grad_stats",
    "layer_norm",
    "rms_norm",
    "layer_norm_backward",
    "rms_norm_backward",
    "optimizer_step",
    "agc",
    "unscale",
    "LossScaler",
]

# torch.nn.utils.clip_grad_norm_'s eps (the spec; gg.CLIP_EPS must equal it).
CLIP_EPS = 1e-6


def compute_dtype(dtype):
    """float64 for float64 arrays, float32 for everything narrower."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def _norm(values, ord):
    """p-norm of a float64 vector with NaN/inf rules and max-abs rescaling."""
    if values.size == 0:
        return 0.0
    if np.isnan(values).any():
        return math.nan
    magnitudes = np.abs(values)
    largest = float(magnitudes.max())
    if math.isinf(largest):
        return math.inf
    if math.isinf(ord):
        return largest
    if largest == 0.0:
        return 0.0
    scaled = magnitudes / largest
    return largest * float(np.sum(scaled**ord)) ** (1.0 / ord)


def tensor_norms(arrays, ord=2.0):
    """Each array's own p-norm."""
    return np.array([_norm(np.asarray(a, dtype=np.float64).ravel(), ord) for a in arrays], dtype=np.float64)


def global_norm(arrays, ord=2.0):
    """The p-norm of all elements of all arrays together."""
    arrays = list(arrays)
    if not arrays:
        return 0.0
    return _norm(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]), ord)


def _scaled(array, coefficient):
    compute = compute_dtype(array.dtype)
    return (array.astype(compute) * compute(coefficient)).astype(array.dtype)


def clip_coefficient(max_norm, total, eps=CLIP_EPS):
    """min(1, max_norm / (total + eps)); NaN stays NaN (torch's clamp)."""
    if total == 0.0:
        return 1.0
    coefficient = max_norm / (total + eps)
    return coefficient if (coefficient < 1.0 or math.isnan(coefficient)) else 1.0


def clip_by_global_norm(arrays, max_norm, ord=2.0, eps=CLIP_EPS):
    """(total, clipped copies) with torch.nn.utils.clip_grad_norm_'s rule."""
    arrays = list(arrays)
    total = global_norm(arrays, ord)
    coefficient = clip_coefficient(max_norm, total, eps)
    if coefficient == 1.0:
        return total, [a.copy() for a in arrays]
    return total, [_scaled(a, coefficient) for a in arrays]


def clip_by_norm(arrays, max_norm, ord=2.0, eps=CLIP_EPS):
    """(per-array norms, clipped copies): each array by its own norm."""
    norms = tensor_norms(arrays, ord)
    out = []
    for array, norm in zip(arrays, norms):
        coefficient = clip_coefficient(max_norm, norm, eps)
        out.append(array.copy() if coefficient == 1.0 else _scaled(array, coefficient))
    return norms, out


def clip_by_value(arrays, low, high):
    """Clamped copies; NaN stays NaN; bounds rounded to the compute type."""
    out = []
    for array in arrays:
        compute = compute_dtype(array.dtype)
        values = array.astype(compute)
        clipped = np.where(values < compute(low), compute(low), values)
        clipped = np.where(clipped > compute(high), compute(high), clipped)
        out.append(clipped.astype(array.dtype))
    return out


def grad_stats(arrays):
    """Per-array statistics as a dict of float64/int64 arrays (see gradguard.GradStats)."""
    fields = {name: [] for name in STATS_FIELDS}
    for array in arrays:
        values = np.asarray(array, dtype=np.float64).ravel()
        finite = values[np.isfinite(values)]
        fields["numel"].append(values.size)
        fields["n_nan"].append(int(np.isnan(values).sum()))
        fields["n_inf"].append(int(np.isinf(values).sum()))
        fields["n_zero"].append(int((values == 0).sum()))
        fields["l2"].append(_norm(finite, 2.0))
        if finite.size:
            # Moments of finite / 2^k with 2^k near max|x| (exact scaling), so
            # that no sum or square overflows or underflows at the array's scale.
            exponent = math.frexp(float(np.abs(finite).max()))[1]
            scaled = np.ldexp(finite, -exponent)
            fields["mean"].append(math.ldexp(scaled.mean(), exponent))
            fields["std"].append(math.ldexp(scaled.std(), exponent))
            fields["abs_mean"].append(math.ldexp(np.abs(scaled).mean(), exponent))
            fields["min"].append(finite.min())
            fields["max"].append(finite.max())
        else:
            for name in ("mean", "std", "abs_mean", "min", "max"):
                fields[name].append(math.nan)
    integer_fields = {"numel", "n_nan", "n_inf", "n_zero"}
    return {
        name: np.array(values, dtype=np.int64 if name in integer_fields else np.float64)
        for name, values in fields.items()
    }


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None):
    """(y, mean, rstd, s) in float64: the formulas of gradguard.layer_norm."""
    s = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    mean = s.mean(axis=-1)
    rstd = 1.0 / np.sqrt(((s - mean[..., None]) ** 2).mean(axis=-1) + eps)
    y = (s - mean[..., None]) * rstd[..., None]
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y, mean, rstd, s


def rms_norm(x, weight=None, eps=1e-6, residual=None):
    """(y, rstd, s) in float64: the formulas of gradguard.rms_norm."""
    s = np.asarray(x, np.float64) + (0.0 if residual is None else np.asarray(residual, np.float64))
    rstd = 1.0 / np.sqrt((s**2).mean(axis=-1) + eps)
    y = s * rstd[..., None]
    if weight is not None:
        y = y * np.asarray(weight, np.float64)
    return y, rstd, s


def layer_norm_backward(dy, x, mean, rstd, weight=None):
    """(dx, dweight, dbias) in float64."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    mean, rstd = np.asarray(mean, np.float64)[..., None], np.asarray(rstd, np.float64)[..., None]
    xhat = (x - mean) * rstd
    g = dy * (1.0 if weight is None else np.asarray(weight, np.float64))
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    if weight is None:
        return dx, None, None
    rows = dy.reshape(-1, dy.shape[-1])
    return dx, (rows * xhat.reshape(rows.shape)).sum(axis=0), rows.sum(axis=0)


def rms_norm_backward(dy, x, rstd, weight=None):
    """(dx, dweight) in float64."""
    dy, x = np.asarray(dy, np.float64), np.asarray(x, np.float64)
    rstd = np.asarray(rstd, np.float64)[..., None]
    xhat = x * rstd
    g = dy * (1.0 if weight is None else np.asarray(weight, np.float64))
    dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    if weight is None:
        return dx, None
    rows = dy.reshape(-1, dy.shape[-1])
    return dx, (rows * xhat.reshape(rows.shape)).sum(axis=0)


def optimizer_step(kind, params, grads, state, step, hyper, grad_scale=1.0):
    """One step of SGD / Adam / AdamW / RMSprop (torch.optim's formulas) on float64
    copies: returns (new params, new state). state: dict name -> list of arrays,
    named as torch.optim names them (momentum_buffer, exp_avg, exp_avg_sq,
    max_exp_avg_sq, square_avg, grad_avg)."""
    new_params, new_state = [], {name: list(values) for name, values in state.items()}
    for index, (param, grad) in enumerate(zip(params, grads)):
        p = np.asarray(param, np.float64).copy()
        g = np.asarray(grad, np.float64) * grad_scale
        wd = hyper.get("weight_decay", 0.0)
        if kind == "sgd":
            if wd:
                g = g + wd * p
            if hyper.get("momentum", 0.0):
                buffer = (
                    g.copy()
                    if step == 1
                    else hyper["momentum"] * new_state["momentum_buffer"][index] + (1 - hyper.get("dampening", 0.0)) * g
                )
                new_state["momentum_buffer"][index] = buffer
                g = g + hyper["momentum"] * buffer if hyper.get("nesterov") else buffer
            p -= hyper["lr"] * g
        elif kind in ("adam", "adamw"):
            if kind == "adamw":
                p *= 1 - hyper["lr"] * wd
            elif wd:
                g = g + wd * p
            beta1, beta2 = hyper["betas"]
            m = beta1 * new_state["exp_avg"][index] + (1 - beta1) * g
            v = beta2 * new_state["exp_avg_sq"][index] + (1 - beta2) * g * g
            new_state["exp_avg"][index], new_state["exp_avg_sq"][index] = m, v
            if hyper.get("amsgrad"):
                v = np.maximum(new_state["max_exp_avg_sq"][index], v)
                new_state["max_exp_avg_sq"][index] = v
            denominator = np.sqrt(v) / math.sqrt(1 - beta2**step) + hyper["eps"]
            p -= hyper["lr"] / (1 - beta1**step) * m / denominator
        else:  # rmsprop
            if wd:
                g = g + wd * p
            alpha = hyper["alpha"]
            square_avg = alpha * new_state["square_avg"][index] + (1 - alpha) * g * g
            new_state["square_avg"][index] = square_avg
            if hyper.get("centered"):
                grad_avg = alpha * new_state["grad_avg"][index] + (1 - alpha) * g
                new_state["grad_avg"][index] = grad_avg
                average = np.sqrt(square_avg - grad_avg * grad_avg) + hyper["eps"]
            else:
                average = np.sqrt(square_avg) + hyper["eps"]
            if hyper.get("momentum", 0.0) > 0:
                buffer = hyper["momentum"] * new_state["momentum_buffer"][index] + g / average
                new_state["momentum_buffer"][index] = buffer
                p -= hyper["lr"] * buffer
            else:
                p -= hyper["lr"] * g / average
        new_params.append(p)
    return new_params, new_state


def _unit_axes(ndim, squeezed_ndim, unit_axis):
    """The axes a unit's norm is taken over: timm's unitwise_norm ("first") or Optax's ("last")."""
    if unit_axis == "first":
        return None if ndim <= 1 else tuple(range(1, ndim))
    if squeezed_ndim <= 1:  # scalars and vectors: one unit
        return None
    if ndim in (2, 3):  # IO and multi-head linear
        return (0,)
    return tuple(range(ndim - 1))  # HWIO convolutions


def agc(params, grads, clipping=0.01, eps=1e-3, unit_axis="first"):
    """Clipped float64 copies of the gradients, unit-wise adaptive clipping
    (Brock et al. 2021, timm's and Optax's rule):
    limit = clipping * max(||W_u||, eps); G_u * limit / max(||G_u||, 1e-6) where ||G_u|| >= limit."""
    out = []
    for param, grad in zip(params, grads):
        p, g = np.asarray(param, np.float64), np.asarray(grad, np.float64)
        axes = _unit_axes(p.ndim, np.squeeze(p).ndim, unit_axis)
        param_norm = np.sqrt((p**2).sum(axis=axes, keepdims=True))
        grad_norm = np.sqrt((g**2).sum(axis=axes, keepdims=True))
        limit = clipping * np.maximum(param_norm, eps)
        out.append(np.where(grad_norm < limit, g, g * (limit / np.maximum(grad_norm, 1e-6))))
    return out


def unscale(grads, inv_scale):
    """(unscaled copies, found_inf): every gradient times inv_scale in its compute
    type, and whether any value was NaN or inf before scaling."""
    found = any(not np.all(np.isfinite(np.asarray(g, np.float64))) for g in grads)
    return [_scaled(np.asarray(g), inv_scale) for g in grads], found


class LossScaler:
    """torch.amp.GradScaler's update rule: an overflow multiplies the scale by
    backoff_factor and restarts the count; growth_interval clean steps in a row
    multiply it by growth_factor unless that leaves the float32 range."""

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        self.scale, self.growth_factor, self.backoff_factor = init_scale, growth_factor, backoff_factor
        self.growth_interval, self.clean_steps = growth_interval, 0

    def update(self, found_inf):
        if found_inf:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            if self.scale * self.growth_factor <= float(np.finfo(np.float32).max):
                self.scale *= self.growth_factor
            self.clean_steps = 0
