"""PyTorch adapters: gradguard on CPU tensors through zero-copy NumPy views,
and on any other device through torch's own kernels.

- drop-ins with torch.nn.utils' signatures and semantics (`clip_grad_norm_`,
  `clip_grad_value_`, `get_total_norm`, `clip_grads_with_norm_`);
- `GradGuardHook` (monitor and clip at every optimiser step) and `monitor_module`;
- `Guard` (gg.Guard around a torch optimiser);
- `BackwardNorm` (the global norm and statistics taken during backward).

Tensors on other devices (cuda, mps, xpu, ...) are handled there by torch's
multi-tensor kernels (gradguard.torch.device; `device_path()` sends CPU tensors
that way too), with one transfer of statistics to the host a step. This package
imports torch; gradguard's top level does not. Other frameworks (JAX, NumPy
pytrees) pass a dict of arrays instead (see gradguard.jax).
"""

try:
    import torch as _torch  # noqa: F401 - the clear error below when it is missing
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("gradguard.torch needs PyTorch: pip install torch") from error

from ._tensors import as_numpy
from .backward_norm import BackwardNorm
from .device import device_path
from .dropins import clip_grad_norm_, clip_grad_value_, clip_grads_with_norm_, get_total_norm
from .guard import Guard
from .hook import GradGuardHook, monitor_module

__all__ = [
    "as_numpy",
    "device_path",
    "clip_grad_norm_",
    "clip_grad_value_",
    "get_total_norm",
    "clip_grads_with_norm_",
    "monitor_module",
    "GradGuardHook",
    "Guard",
    "BackwardNorm",
]
