"""PyTorch adapters: gradguard on CPU tensors through zero-copy NumPy views.

This module imports torch; gradguard's top level does not. Other frameworks
(JAX, NumPy pytrees) pass a dict of arrays instead: flatten the pytree to
{path: np.asarray(leaf)} (e.g. with jax.tree_util.tree_flatten_with_path) and
hand the dict to gg.grad_stats, gg.GradientMonitor.update or, for writable
NumPy leaves, the clipping functions.
"""

from __future__ import annotations

try:
    import torch as _torch
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("gradguard.torch needs PyTorch: pip install torch") from error


from .clip import clip_by_global_norm

__all__ = ["as_numpy", "clip_grad_norm_", "monitor_module"]


def as_numpy(tensor):
    """A NumPy array sharing the memory of a CPU tensor (bfloat16 through ml_dtypes)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"gradguard works on CPU tensors; got one on {tensor.device}")
    tensor = tensor.detach()
    if tensor.dtype == _torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 tensors need ml_dtypes: pip install ml_dtypes") from None
        return tensor.view(_torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """torch.nn.utils.clip_grad_norm_ computed by gradguard: same arguments, same
    in-place result on the .grad of CPU parameters, returns the total norm as a
    0-dim float32 tensor (float64 when the gradients are). `foreach` is accepted
    for compatibility and ignored (gradguard always works on the whole list)."""
    if isinstance(parameters, _torch.Tensor):
        parameters = [parameters]
    # torch takes 0-dim tensors for the scalars too (float() of them, as torch does).
    max_norm = float(max_norm) if isinstance(max_norm, _torch.Tensor) else max_norm
    norm_type = float(norm_type) if isinstance(norm_type, _torch.Tensor) else norm_type
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return _torch.tensor(0.0)
    arrays = [as_numpy(g) for g in grads]
    total = clip_by_global_norm(arrays, max_norm, ord=norm_type, error_if_nonfinite=error_if_nonfinite)
    dtype = _torch.float64 if all(g.dtype == _torch.float64 for g in grads) else _torch.float32
    return _torch.tensor(total, dtype=dtype)


def monitor_module(monitor, module, step=None, with_params=True):
    """Feed a GradientMonitor from module.named_parameters() after backward
    (parameters without a gradient are skipped); returns the step's findings."""
    named = [(name, p) for name, p in module.named_parameters() if p.grad is not None]
    grads = {name: as_numpy(p.grad) for name, p in named}
    params = {name: as_numpy(p) for name, p in named} if with_params else None
    return monitor.update(grads, params=params, step=step)
