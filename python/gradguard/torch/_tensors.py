"""CPU tensors as NumPy arrays that share their memory, and the gradients of
parameters as arrays the core can write in place."""

from __future__ import annotations

from functools import reduce

import torch as _torch

__all__ = ["as_numpy"]


def _check_cpu(tensor):
    if tensor.device.type != "cpu":
        raise ValueError(
            f"NumPy cannot view a tensor on {tensor.device}: gradguard.torch's functions (the drop-ins, "
            "GradGuardHook, Guard, monitor_module) take it on its device through torch's kernels; "
            "gradguard's NumPy functions need it in CPU memory (.cpu())"
        )


def as_numpy(tensor):
    """A NumPy array sharing the memory of a CPU tensor (bfloat16 through ml_dtypes)."""
    _check_cpu(tensor)
    tensor = tensor.detach()
    if tensor.dtype == _torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 tensors need ml_dtypes: pip install ml_dtypes") from None
        return tensor.view(_torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def dense_view(tensor):
    """The tensor's memory as a C-contiguous tensor view, when its elements fill
    one block in some order of its axes (contiguous, channels_last, a
    transpose), else None. Element-wise work does not care about the order."""
    if tensor.is_contiguous():
        return tensor
    order = sorted(range(tensor.dim()), key=lambda axis: -tensor.stride(axis))
    permuted = tensor.permute(order)
    return permuted if permuted.is_contiguous() else None


class InPlace:
    """NumPy arrays to write the gradients through: views of dense gradients,
    copies of the others, written back by `finish()`."""

    def __init__(self, grads):
        self.grads, self.arrays, self.copies = grads, [], []
        for grad in grads:
            _check_cpu(grad)
            view = dense_view(grad)
            if view is None:
                contiguous = grad.contiguous()
                self.copies.append((grad, contiguous))
                view = contiguous
            self.arrays.append(as_numpy(view))

    def finish(self):
        for grad, contiguous in self.copies:
            grad.copy_(contiguous)


def scalar(value):
    """float() of torch's scalar arguments, which may be 0-dim tensors."""
    return float(value) if isinstance(value, _torch.Tensor) else value


def norm_dtype(tensors):
    """The dtype torch returns a total norm in: the promotion of the tensors' dtypes."""
    return reduce(_torch.promote_types, (t.dtype for t in tensors))


def gradients(parameters):
    if isinstance(parameters, _torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def trainable(named):
    """The (name, tensor) pairs of `named` that require a gradient now. A
    recorder names its monitor after these but reads every parameter's
    gradient (named_parameters(..., frozen=True)), so that a layer unfrozen
    later joins the monitor at its first gradient."""
    return [(name, tensor) for name, tensor in named if tensor.requires_grad]


def named_parameters(parameters, frozen=False):
    """[(name, tensor)] from a module or an iterable of (name, tensor) pairs:
    those that require a gradient, or with frozen=True every one (a recorder
    reads each step the gradients present then: see trainable)."""
    if hasattr(parameters, "named_parameters"):
        pairs = list(parameters.named_parameters())
    else:
        pairs = list(parameters)
        if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], _torch.Tensor) for p in pairs):
            raise TypeError("parameters must be a torch.nn.Module or its named_parameters(): (name, tensor) pairs")
    named = [(str(name), tensor) for name, tensor in pairs if frozen or tensor.requires_grad]
    if not any(tensor.requires_grad for _, tensor in named):
        raise ValueError("parameters holds no tensor that requires a gradient")
    if len({name for name, _ in named}) != len(named):
        raise ValueError("parameter names must be unique")
    return named
