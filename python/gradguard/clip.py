"""Gradient clipping: by the global norm of all gradients, per tensor, by value.

Each call hands the whole list to one multi-tensor C++ kernel (threads, SIMD,
GIL released). Computing the norm and applying the clip are also available
separately (`global_norm`, then `clip_by_global_norm` with a known bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, boolean, finite_or_none, name_of, non_negative, norm_order, real

__all__ = [
    "CLIP_EPS",
    "clip_coefficient",
    "global_norm",
    "clip_by_global_norm",
    "clip_with_norm_",
    "clip_by_norm",
    "clip_by_value",
    "ClipReport",
    "NonFiniteNormError",
]


# torch.nn.utils.clip_grad_norm_'s eps, every clipping entry point's default (the core's kClipEps).
CLIP_EPS = _core.CLIP_EPS


def clip_coefficient(max_norm: float, total_norm: float, eps: float = CLIP_EPS) -> float:
    """torch's clip rule, the one every clipping entry point applies (computed by the core):

        clip_coef = min(1, max_norm / (total_norm + eps))     (1 when total_norm = 0; NaN when it is NaN)

    Arrays are scaled by it only when it is not 1. For adapters whose
    arrays the core cannot write (JAX's immutable arrays, Keras tensors)."""
    return _core.clip_coefficient(float(max_norm), float(total_norm), float(eps))


class NonFiniteNormError(FloatingPointError, RuntimeError):
    """The total norm was NaN or inf and error_if_nonfinite=True: nothing was clipped.

    A FloatingPointError and a RuntimeError at once, so code written for
    torch.nn.utils.clip_grad_norm_ (which raises RuntimeError) catches it too.
    """


@dataclass(frozen=True)
class ClipReport:
    """What one `clip_by_global_norm` call saw and did, from its single norm pass.

    total_norm: the global norm before clipping.
    clip_coef: max_norm / (total_norm + eps), clamped to at most 1 (NaN when total_norm is NaN).
    clipped: whether the arrays were multiplied by clip_coef.
    max_norm: the bound asked for.
    nonfinite: indices (or names, for a dict) of the arrays holding NaN or inf.
    """

    total_norm: float
    clip_coef: float
    clipped: bool
    max_norm: float
    nonfinite: tuple


def global_norm(arrays: Arrays, ord: Union[Real, str] = 2.0) -> float:
    """The p-norm of all elements of all arrays taken together.

        global_norm = (sum_i sum_j |arrays[i]_j|^p)^(1/p),   max_i,j |arrays[i]_j| for p = inf

    Args:
        arrays: a list/tuple (or dict name -> array) of float32, float64, float16
            or bfloat16 NumPy arrays; dtypes may be mixed. A single array is a list of one.
        ord: p: 2 (default), 1, inf, or any p > 0.

    Returns:
        The norm as a Python float, accumulated in float64 whatever the dtypes
        (so fp16 gradients of 60000.0 give a finite, exact-to-float64 norm).
        `[]` gives 0.0; NaN anywhere gives nan; otherwise inf anywhere gives inf.
        float64 inputs whose squares would overflow or underflow float64 are
        rescaled by their largest magnitude in a second pass, as LAPACK's nrm2 does.
    """
    array_list, names = as_array_list(arrays)
    total, _ = _core.global_norm(array_list, norm_order(ord), names)
    return total


def clip_by_global_norm(
    arrays: Arrays,
    max_norm: Real,
    *,
    ord: Union[Real, str] = 2.0,
    eps: Real = CLIP_EPS,
    error_if_nonfinite: bool = False,
    return_report: bool = False,
) -> Union[float, ClipReport]:
    """Scale all arrays in place so that their global norm is at most max_norm.

    The semantics of ``torch.nn.utils.clip_grad_norm_``:

        total = global_norm(arrays, ord)
        clip_coef = min(1, max_norm / (total + eps))
        arrays[i] *= clip_coef   for every i, when clip_coef < 1

    With ``eps=0`` this is TensorFlow's ``tf.clip_by_global_norm`` and Optax's
    ``clip_by_global_norm`` rule: arrays[i] * max_norm / max(total, max_norm),
    for every finite total (an infinite total follows torch, below; TensorFlow
    sets every entry to NaN then).

    One pass reads every array for the norm; a second pass scales in place only
    when clipping happens (the multiply is done in float32 for 16-bit arrays,
    float64 for float64 ones, and rounded once).

    Non-finite totals: with ``error_if_nonfinite=True`` a NonFiniteNormError
    (both a FloatingPointError and a RuntimeError, as torch raises) names the arrays holding NaN/inf and nothing is modified. Without it,
    behaviour is torch's: a NaN total gives a NaN coefficient and every array
    becomes NaN; an inf total gives coefficient 0, so finite entries become 0
    and infinite ones NaN.

    Args:
        arrays: list/tuple or dict name -> array of writable, contiguous
            float32/float64/float16/bfloat16 arrays (every array is validated
            before any is written).
        max_norm: the bound, a number >= 0 (inf: never clip).
        ord: the norm's p: 2 (default), 1, inf, or any p > 0.
        eps: added to the total before dividing (torch's 1e-6 by default), >= 0.
        error_if_nonfinite: raise instead of scaling when the total is NaN or inf.
        return_report: return a ClipReport instead of the total norm.

    Returns:
        The total norm before clipping, as a Python float (or a ClipReport).
    """
    array_list, names = as_array_list(arrays)
    bound = non_negative(max_norm, "max_norm")
    epsilon = non_negative(eps, "eps", allow_inf=False)
    total, coefficient, clipped, nonfinite = _core.clip_by_global_norm(
        array_list,
        bound,
        ord=norm_order(ord),
        eps=epsilon,
        error_if_nonfinite=boolean(error_if_nonfinite, "error_if_nonfinite"),
        names=names,
    )
    labels = tuple(names[index] for index in nonfinite) if names is not None else tuple(nonfinite)
    if error_if_nonfinite and not math.isfinite(total):
        raise nonfinite_norm_error(total, ord, [name_of(index, names) for index in nonfinite])
    if not return_report:
        return total
    return ClipReport(total_norm=total, clip_coef=coefficient, clipped=clipped, max_norm=bound, nonfinite=labels)


def nonfinite_norm_error(total, ord, culprits, where="of the arrays") -> NonFiniteNormError:
    """The error error_if_nonfinite raises (here and across ranks): the total and where the NaN/inf are."""
    return NonFiniteNormError(
        f"the total norm of order {ord} {where} is {total}, so they were not clipped "
        f"(non-finite values in: {', '.join(map(str, culprits))}). Set error_if_nonfinite=False to clip anyway, "
        "as torch does."
    )


def clip_with_norm_(arrays: Arrays, max_norm: Real, total_norm: Real, *, eps: Real = CLIP_EPS) -> float:
    """Scale all arrays in place by the clip coefficient of an already known norm
    (``torch.nn.utils.clip_grads_with_norm_``):

        clip_coef = min(1, max_norm / (total_norm + eps))      (1 when total_norm = 0)
        arrays[i] *= clip_coef   for every i, when clip_coef != 1

    This is the second half of clip_by_global_norm, for callers that compute
    or adjust the norm themselves (adaptive clipping, a norm reduced across
    processes). A NaN total_norm gives a NaN coefficient, applied as torch does.
    Every array is validated (writable, contiguous, aligned, not overlapping
    another) before any is written.

    Returns:
        The coefficient used, as a Python float.
    """
    array_list, names = as_array_list(arrays)
    bound = non_negative(max_norm, "max_norm")
    total = real(total_norm, "total_norm", low=0.0) if not _is_nan(total_norm) else math.nan
    epsilon = non_negative(eps, "eps", allow_inf=False)
    return _core.clip_with_norm(array_list, bound, total, eps=epsilon, names=names)


def _is_nan(value):
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def clip_by_norm(arrays: Arrays, max_norm: Real, *, ord: Union[Real, str] = 2.0, eps: Real = CLIP_EPS) -> np.ndarray:
    """Clip each array in place by its own norm (tf.clip_by_norm, Keras ``clipnorm``).

        norm_i = ||arrays[i]||_p
        arrays[i] *= min(1, max_norm / (norm_i + eps))

    With ``eps=0`` this is exactly tf.clip_by_norm: t * max_norm / max(||t||, max_norm).
    An array whose norm is NaN becomes NaN, like clip_by_global_norm without
    error_if_nonfinite.

    Returns:
        float64 NumPy array of the per-array norms before clipping.
    """
    array_list, names = as_array_list(arrays)
    bound = non_negative(max_norm, "max_norm")
    epsilon = non_negative(eps, "eps", allow_inf=False)
    return _core.clip_by_norm(array_list, bound, ord=norm_order(ord), eps=epsilon, names=names)


def clip_by_value(
    arrays: Arrays,
    clip_value: Optional[Real] = None,
    *,
    min_value: Optional[Real] = None,
    max_value: Optional[Real] = None,
) -> None:
    """Clamp every element in place, like ``torch.nn.utils.clip_grad_value_``.

        arrays[i] = clamp(arrays[i], -clip_value, clip_value)          (clip_value given)
        arrays[i] = clamp(arrays[i], min_value, max_value)             (bounds given; either may be None)

    NaN stays NaN. Bounds are rounded to the array's compute type (float32 for
    16- and 32-bit arrays) before comparing, and the result to the array's dtype.
    """
    array_list, names = as_array_list(arrays)
    if clip_value is not None:
        if min_value is not None or max_value is not None:
            raise TypeError("give either clip_value or min_value/max_value, not both")
        high = non_negative(clip_value, "clip_value")
        low = -high
    else:
        low = finite_or_none(min_value, "min_value")
        high = finite_or_none(max_value, "max_value")
        if low is None and high is None:
            raise TypeError("clip_by_value needs clip_value, or min_value and/or max_value")
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        if low > high:
            raise ValueError(f"min_value ({low}) must not exceed max_value ({high})")
    _core.clip_by_value(array_list, low, high, names)
