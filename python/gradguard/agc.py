"""Adaptive gradient clipping, unit-wise (Brock et al., 2021, NFNets)."""

from __future__ import annotations

import math

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, in_order_of, non_negative

__all__ = ["agc"]


def _units(shape, unit_axis):
    """(units, units_first) of one tensor, as the reference implementations cut it.

    "first" (timm): a tensor of at most one axis is one unit; otherwise each
    index of axis 0 is a unit. "last" (Optax's unitwise_norm): a tensor whose
    squeezed shape has at most one axis is one unit; 2- and 3-axis tensors
    (IO linear, multi-head linear) have a unit per position of the axes after
    the first; 4-axis ones (HWIO convolutions) a unit per index of the last
    axis (and so do tensors of more axes, which Optax refuses).
    """
    if unit_axis == "first":
        return (1, True) if len(shape) <= 1 else (shape[0], True)
    if sum(1 for length in shape if length != 1) <= 1:
        return 1, True
    if len(shape) in (2, 3):
        return math.prod(shape[1:]), False
    return shape[-1], False


def agc(params: Arrays, grads: Arrays, clipping: Real = 0.01, eps: Real = 1e-3, unit_axis: str = "first") -> np.ndarray:
    """Clip each output unit's gradient relative to its weights, in place:

        max_u = clipping * max(||W_u||, eps)
        G_u  *= max_u / max(||G_u||, 1e-6)      where ||G_u|| >= max_u

    with ||.||_u the L2 norm of unit u: along axis 0 of each tensor for
    unit_axis="first" (PyTorch's (out, in, kh, kw) layout; timm's
    adaptive_clip_grad), or as Optax's adaptive_grad_clip cuts units for
    unit_axis="last" (JAX IO and HWIO layouts: reduced over axis 0 for 2- and
    3-axis tensors, over all but the last axis for 4-axis ones). A tensor of
    one axis (or, for "last", of one non-unit axis) is one unit. params and
    grads are lists matched by position, or dicts matched by name. Every unit
    norm is computed, and every array validated, before any gradient is written.

    Returns a float64 array: the fraction of units clipped in each tensor.
    """
    if unit_axis not in ("first", "last"):
        raise ValueError(
            f"unit_axis must be 'first' (PyTorch, output-first) or 'last' (JAX/Optax HWIO), got {unit_axis!r}"
        )
    clipping = non_negative(clipping, "clipping", allow_inf=False)
    eps = non_negative(eps, "eps", allow_inf=False)
    param_list, names = as_array_list(params, "params")
    grad_list, grad_names = as_array_list(grads, "grads")
    grad_list = in_order_of(names, grad_list, grad_names)
    names = names if names is not None else grad_names
    layouts = [_units(np.shape(grad), unit_axis) if isinstance(grad, np.ndarray) else (1, True) for grad in grad_list]
    return _core.agc(
        param_list,
        grad_list,
        units=[units for units, _ in layouts],
        units_first=[first for _, first in layouts],
        clipping=clipping,
        eps=eps,
        names=names,
    )
