"""Drop-ins with torch.nn.utils' signatures and semantics (`clip_grad_norm_`,
`clip_grad_value_`, `get_total_norm`, `clip_grads_with_norm_`), computed by
gradguard's core on CPU tensors: gradients that are None are skipped, any
dense memory format (channels_last included) is worked on in place, other
layouts through a copy written back."""

from __future__ import annotations

import torch as _torch

from .. import _core
from .._arguments import real
from ..clip import NonFiniteNormError, clip_by_global_norm, clip_with_norm_, global_norm
from . import clip_tap
from ._tensors import InPlace, as_numpy, gradients, norm_dtype, scalar
from .device import clamp_on_device_, clip_on_device_, device_total_norm, on_device_path

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "clip_grads_with_norm_"]


def get_total_norm(tensors, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """torch.nn.utils.get_total_norm: the norm_type-norm of all tensors together
    (NaN anywhere gives NaN, else inf gives inf), as a 0-dim tensor in the
    tensors' (promoted) dtype; 0.0 for none. error_if_nonfinite raises a
    RuntimeError. `foreach` is accepted and ignored (one multi-tensor pass always)."""
    if isinstance(tensors, _torch.Tensor):
        tensors = [tensors]
    tensors = list(tensors)
    if not tensors:
        return _torch.tensor(0.0)
    if on_device_path(tensors):
        total = device_total_norm(tensors, scalar(norm_type))  # stays on the device, as torch's does
        if error_if_nonfinite and bool(_torch.logical_or(total.isnan(), total.isinf())):  # torch syncs here too
            raise _nonfinite_error(norm_type)
        return total
    arrays = [as_numpy(t) for t in tensors]
    total = global_norm(arrays, ord=scalar(norm_type))
    if error_if_nonfinite and not _torch.isfinite(_torch.tensor(total)):
        raise _nonfinite_error(norm_type)
    return _torch.tensor(total, dtype=norm_dtype(tensors))


def _nonfinite_error(norm_type):
    """torch's message, as gg.NonFiniteNormError (a RuntimeError, as torch raises, and a FloatingPointError)."""
    return NonFiniteNormError(
        f"The total norm of order {float(scalar(norm_type))} for gradients from `parameters` is non-finite, "
        "so it cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
        "anyway, set `error_if_nonfinite=False`"
    )


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """torch.nn.utils.clip_grads_with_norm_: every .grad *= min(1, max_norm / (total_norm + CLIP_EPS))."""
    parameters = clip_tap.before_clip(parameters)  # a watcher reads the gradients before they change
    grads = gradients(parameters)
    if not grads:
        return
    if on_device_path(grads):
        clip_on_device_(grads, scalar(max_norm), total_norm)
        return
    in_place = InPlace(grads)
    clip_with_norm_(in_place.arrays, scalar(max_norm), scalar(total_norm))
    in_place.finish()


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """torch.nn.utils.clip_grad_norm_ computed by gradguard: same arguments, same
    in-place result on the .grad of CPU parameters (None gradients skipped, any
    memory format), returns the total norm as a 0-dim tensor in the gradients'
    dtype. `foreach` is accepted for compatibility and ignored (gradguard always
    works on the whole list)."""
    parameters = clip_tap.before_clip(parameters)  # a watcher reads the gradients before they change
    grads = gradients(parameters)
    if not grads:
        return _torch.tensor(0.0)
    if on_device_path(grads):  # torch's algorithm on the device: no transfer, no sync
        total = get_total_norm(grads, norm_type, error_if_nonfinite)
        clip_on_device_(grads, scalar(max_norm), total)
        return total
    in_place = InPlace(grads)
    total = clip_by_global_norm(
        in_place.arrays, scalar(max_norm), ord=scalar(norm_type), error_if_nonfinite=error_if_nonfinite
    )
    in_place.finish()
    return _torch.tensor(total, dtype=norm_dtype(grads))


def clip_grad_value_(parameters, clip_value, foreach=None):
    """torch.nn.utils.clip_grad_value_: every .grad clamped to [-clip_value, clip_value]
    (clamp_min then clamp_max, as torch does, so a negative clip_value gives -|clip_value|
    everywhere); NaN stays NaN."""
    parameters = clip_tap.before_clip(parameters)  # a watcher reads the gradients before they change
    grads = gradients(parameters)
    if not grads:
        return
    bound = real(scalar(clip_value), "clip_value")
    if on_device_path(grads):
        clamp_on_device_(grads, -bound, bound)
        return
    in_place = InPlace(grads)
    _core.clip_by_value(in_place.arrays, -bound, bound, None)
    in_place.finish()
