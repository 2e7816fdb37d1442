"""Adaptive gradient clipping, unit-wise (Brock et al., 2021, NFNets)."""
from __future__ import annotations

import numpy as np

from . import _core
from ._arguments import as_array_list, non_negative

__all__ = ["agc"]


def _units(shape, unit_axis):
    """(units, units_first) for one tensor: vectors and scalars are one unit."""
    if len(shape) <= 1:
        return 1, True
    return (shape[0], True) if unit_axis == "first" else (shape[-1], False)


def agc(params, grads, clipping=0.01, eps=1e-3, unit_axis="first"):
    """Clip each output unit's gradient relative to its weights, in place:

        max_u = clipping * max(||W_u||, eps)
        G_u  *= max_u / max(||G_u||, 1e-6)      where ||G_u|| >= max_u

    with ||.||_u the L2 norm of unit u: along axis 0 of each tensor for
    unit_axis="first" (PyTorch's (out, in, kh, kw) layout; timm's
    adaptive_clip_grad), or along the last axis for unit_axis="last" (JAX/Optax
    IO and HWIO layouts; optax.adaptive_grad_clip for 2-D and 4-D tensors). A
    vector or scalar is one unit. The unit norms are computed by the C++ core.

    Returns a float64 array: the fraction of units clipped in each tensor.
    """
    if unit_axis not in ("first", "last"):
        raise ValueError(f"unit_axis must be 'first' (PyTorch, output-first) or 'last' (JAX/Optax HWIO), got {unit_axis!r}")
    clipping = non_negative(clipping, "clipping", allow_inf=False)
    eps = non_negative(eps, "eps", allow_inf=False)
    param_list, names = as_array_list(params, "params")
    grad_list, _ = as_array_list(grads, "grads")
    if len(param_list) != len(grad_list):
        raise ValueError(f"{len(param_list)} params but {len(grad_list)} grads")
    for index, (param, grad) in enumerate(zip(param_list, grad_list)):
        if not isinstance(grad, np.ndarray) or not isinstance(param, np.ndarray):
            raise TypeError(f"params[{index}] and grads[{index}] must be NumPy arrays")
        if param.shape != grad.shape:
            raise ValueError(f"grads[{index}] has shape {grad.shape}, params[{index}] {param.shape}")
        if not grad.flags.c_contiguous:
            raise ValueError(f"grads[{index}] must be C-contiguous (it is scaled unit by unit in place)")
        if not grad.flags.writeable:
            raise ValueError(f"grads[{index}] is read-only")
    clipped = np.zeros(len(grad_list))
    plans = []
    for param, grad in zip(param_list, grad_list):  # every norm first: nothing is written before all are checked
        if grad.size == 0:
            plans.append(None)
            continue
        units, first = _units(grad.shape, unit_axis)
        weight_norms = _core.unit_norms(np.ascontiguousarray(param), units, first)
        grad_norms = _core.unit_norms(grad, units, first)
        limit = clipping * np.maximum(weight_norms, eps)
        factors = np.where(grad_norms < limit, 1.0, limit / np.maximum(grad_norms, 1e-6))
        plans.append((units, first, factors))
    for index, (grad, plan) in enumerate(zip(grad_list, plans)):
        if plan is None:
            continue
        units, first, factors = plan
        if (factors != 1.0).any():
            _core.scale_units(grad, np.ascontiguousarray(factors), first)
        clipped[index] = float(np.mean(factors != 1.0))
    return clipped
