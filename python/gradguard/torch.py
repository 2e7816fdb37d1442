"""PyTorch adapters: gradguard on CPU tensors through zero-copy NumPy views.

Drop-ins with torch.nn.utils' signatures and semantics (`clip_grad_norm_`,
`clip_grad_value_`, `get_total_norm`, `clip_grads_with_norm_`): gradients
that are None are skipped, any dense memory format (channels_last included)
is worked on in place, other layouts through a copy written back. This build
has no CUDA backend: CUDA tensors get a clear error.

This module imports torch; gradguard's top level does not. Other frameworks
(JAX, NumPy pytrees) pass a dict of arrays instead: flatten the pytree to
{path: np.asarray(leaf)} (e.g. with jax.tree_util.tree_flatten_with_path) and
hand the dict to gg.grad_stats, gg.GradientMonitor.update or, for writable
NumPy leaves, the clipping functions.
"""

from __future__ import annotations

from functools import reduce

try:
    import torch as _torch
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError("gradguard.torch needs PyTorch: pip install torch") from error

import copy
import math

from . import _core
from ._arguments import real
from .clip import clip_by_global_norm, clip_with_norm_, global_norm
from .guard import Guard as _Guard
from .optim import StepReport
from .stats import grad_stats

__all__ = [
    "as_numpy",
    "clip_grad_norm_",
    "clip_grad_value_",
    "get_total_norm",
    "clip_grads_with_norm_",
    "monitor_module",
    "GradGuardHook",
    "Guard",
    "BackwardNorm",
]


def _check_cpu(tensor):
    if tensor.device.type != "cpu":
        raise ValueError(
            f"gradguard works on CPU tensors and this build has no CUDA backend; got a tensor on {tensor.device} "
            "(move it with .cpu(), or use torch.nn.utils for device tensors)"
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


def _dense_view(tensor):
    """The tensor's memory as a C-contiguous tensor view, when its elements fill
    one block in some order of its axes (contiguous, channels_last, a
    transpose), else None. Element-wise work does not care about the order."""
    if tensor.is_contiguous():
        return tensor
    order = sorted(range(tensor.dim()), key=lambda axis: -tensor.stride(axis))
    permuted = tensor.permute(order)
    return permuted if permuted.is_contiguous() else None


class _InPlace:
    """NumPy arrays to write the gradients through: views of dense gradients,
    copies of the others, written back by `finish()`."""

    def __init__(self, grads):
        self.grads, self.arrays, self.copies = grads, [], []
        for grad in grads:
            _check_cpu(grad)
            view = _dense_view(grad)
            if view is None:
                contiguous = grad.contiguous()
                self.copies.append((grad, contiguous))
                view = contiguous
            self.arrays.append(as_numpy(view))

    def finish(self):
        for grad, contiguous in self.copies:
            grad.copy_(contiguous)


def _gradients(parameters):
    if isinstance(parameters, _torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def _scalar(value):
    """float() of torch's scalar arguments, which may be 0-dim tensors."""
    return float(value) if isinstance(value, _torch.Tensor) else value


def _norm_dtype(tensors):
    """The dtype torch returns a total norm in: the promotion of the tensors' dtypes."""
    return reduce(_torch.promote_types, (t.dtype for t in tensors))


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
    arrays = [as_numpy(t) for t in tensors]
    total = global_norm(arrays, ord=_scalar(norm_type))
    if error_if_nonfinite and not _torch.isfinite(_torch.tensor(total)):
        raise RuntimeError(
            f"The total norm of order {float(_scalar(norm_type))} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the non-finite norm "
            "anyway, set `error_if_nonfinite=False`"
        )
    return _torch.tensor(total, dtype=_norm_dtype(tensors))


def clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=None):
    """torch.nn.utils.clip_grads_with_norm_: every .grad *= min(1, max_norm / (total_norm + 1e-6))."""
    grads = _gradients(parameters)
    if not grads:
        return
    in_place = _InPlace(grads)
    clip_with_norm_(in_place.arrays, _scalar(max_norm), _scalar(total_norm))
    in_place.finish()


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """torch.nn.utils.clip_grad_norm_ computed by gradguard: same arguments, same
    in-place result on the .grad of CPU parameters (None gradients skipped, any
    memory format), returns the total norm as a 0-dim tensor in the gradients'
    dtype. `foreach` is accepted for compatibility and ignored (gradguard always
    works on the whole list)."""
    grads = _gradients(parameters)
    if not grads:
        return _torch.tensor(0.0)
    in_place = _InPlace(grads)
    total = clip_by_global_norm(
        in_place.arrays, _scalar(max_norm), ord=_scalar(norm_type), error_if_nonfinite=error_if_nonfinite
    )
    in_place.finish()
    return _torch.tensor(total, dtype=_norm_dtype(grads))


def clip_grad_value_(parameters, clip_value, foreach=None):
    """torch.nn.utils.clip_grad_value_: every .grad clamped to [-clip_value, clip_value]
    (clamp_min then clamp_max, as torch does, so a negative clip_value gives -|clip_value|
    everywhere); NaN stays NaN."""
    grads = _gradients(parameters)
    if not grads:
        return
    bound = real(_scalar(clip_value), "clip_value")
    in_place = _InPlace(grads)
    _core.clip_by_value(in_place.arrays, -bound, bound, None)
    in_place.finish()


def monitor_module(monitor, module, step=None, with_params=True):
    """Feed a GradientMonitor from module.named_parameters() after backward;
    parameters without a gradient this step (frozen, unused) are left out of
    the step (GradientMonitor.update's allow_missing). Returns the step's findings."""
    named = [(name, p) for name, p in module.named_parameters() if p.grad is not None]
    grads = {name: as_numpy(p.grad) for name, p in named}
    params = {name: as_numpy(p) for name, p in named} if with_params else None
    return monitor.update(grads, params=params, step=step, allow_missing=True)


def _named_parameters(parameters):
    """[(name, tensor)] from a module or an iterable of (name, tensor) pairs."""
    if hasattr(parameters, "named_parameters"):
        pairs = list(parameters.named_parameters())
    else:
        pairs = list(parameters)
        if not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], _torch.Tensor) for p in pairs):
            raise TypeError("parameters must be a torch.nn.Module or its named_parameters(): (name, tensor) pairs")
    named = [(str(name), tensor) for name, tensor in pairs if tensor.requires_grad]
    if not named:
        raise ValueError("parameters holds no tensor that requires a gradient")
    if len({name for name, _ in named}) != len(named):
        raise ValueError("parameter names must be unique")
    return named


class GradGuardHook:
    """Per-layer gradient statistics (and optional clipping) at every optimiser step.

    hook = GradGuardHook(model, optimizer=opt, max_norm=1.0) registers an
    optimizer step pre-hook: each opt.step() (also when torch.amp.GradScaler
    calls it) first feeds the monitor the parameters' gradients by name, then
    clips them in place by their global L2 norm, with

        total_norm = ||(||g_1||, ..., ||g_n||)||_2,  g_i <- g_i * min(1, max_norm / (total_norm + 1e-6))

    as torch.nn.utils.clip_grad_norm_. Under a GradScaler this sees the
    unscaled gradients (GradScaler.step unscales before it calls opt.step), and
    a step the scaler skips for inf/NaN never reaches the hook, so it stays
    skipped and leaves the monitor untouched.

    Without an optimizer, call hook() after backward (and after
    scaler.unscale_(opt) when scaling; pass scaler= so that a step with
    inf/NaN gradients, which the scaler will skip, is neither recorded nor clipped;
    skip_nonfinite=True does the same for a caller that skips such steps itself).

    parameters: a torch.nn.Module or its named_parameters(); tensors that do
    not require a gradient are left out, and a parameter whose .grad is None
    on a step is skipped for that step. monitor: a GradientMonitor (default:
    a new one over these names). CPU tensors only (this build has no CUDA
    backend). hook.last_norm is the last step's pre-clip global norm;
    hook.steps counts the steps seen; hook.remove() detaches it.
    """

    def __init__(self, parameters, monitor=None, *, optimizer=None, max_norm=None, scaler=None, skip_nonfinite=False):
        from .monitor import GradientMonitor

        self._named = _named_parameters(parameters)
        self.names = [name for name, _ in self._named]
        self.monitor = GradientMonitor(names=self.names) if monitor is None else monitor
        if self.monitor.names is None:
            raise ValueError("monitor must know its layers: GradientMonitor(names=...), or pass none and one is made")
        self.max_norm = real(_scalar(max_norm), "max_norm", low=0.0, allow_none=True)
        self.scaler = scaler
        self.skip_nonfinite = bool(skip_nonfinite)
        self.steps = 0
        self.last_norm = None
        self._handle = None
        if optimizer is not None:
            self._handle = optimizer.register_step_pre_hook(self._before_step)

    def __call__(self):
        """Record (and clip) the current gradients; returns the monitor's findings."""
        present = [(name, p.grad) for name, p in self._named if p.grad is not None]
        if not present:
            return []
        in_place = _InPlace([grad for _, grad in present])
        grads = {name: array for (name, _), array in zip(present, in_place.arrays)}
        stats = grad_stats(grads)  # one read serves the monitor and the norm
        norm = stats.global_norm
        self.last_norm = norm
        if (self.scaler is not None or self.skip_nonfinite) and not math.isfinite(norm):
            return []  # the step will be skipped: nothing to record, nothing to clip
        findings = self.monitor.update_stats(stats, step=self.steps, allow_missing=True)
        self.steps += 1
        if self.max_norm is not None and math.isfinite(norm):
            clip_with_norm_(list(grads.values()), self.max_norm, norm)
            in_place.finish()
        return findings

    def _before_step(self, optimizer, args, kwargs):
        self()  # a step pre-hook must return None (or replacement arguments)

    def remove(self):
        """Detach from the optimiser (a no-op without one)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class _TorchStep:
    """A torch optimiser seen through gg.optim's interface, for gg.Guard."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups  # torch's own dicts: gg.Guard scales their "lr"
        self.max_grad_norm = None
        self._tensors = [p for group in optimizer.param_groups for p in group["params"]]

    @property
    def params(self):
        return [as_numpy(p.data) for p in self._tensors]

    def gradients(self):
        return [p.grad for p in self._tensors if p.grad is not None]

    def step(self, grads, return_report=False, skip_nonfinite=False, grad_norm=None):
        coefficient = 1.0
        if self.max_grad_norm is not None and grad_norm is not None:
            coefficient = clip_with_norm_(grads, self.max_grad_norm, grad_norm)
        self.optimizer.step()
        return StepReport(grad_norm, coefficient, False, ())

    def state_dict(self):
        return copy.deepcopy(self.optimizer.state_dict())

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(copy.deepcopy(state))


class Guard(_Guard):
    """gg.Guard around a torch optimiser: `guard.step()` after backward reads the
    .grad of the optimiser's parameters through NumPy views (any dense memory
    format; None gradients skipped), skips the step when they hold inf/NaN,
    clips them in place at the guard's threshold, then calls optimizer.step().
    Learning-rate backoff scales every parameter group alike; snapshots copy
    the parameters and the optimiser's state_dict. `names` (e.g. a module's
    named_parameters() names, in the optimiser's order) label the monitor's layers.
    """

    def __init__(self, optimizer, clip=None, monitor=None, *, names=None, **policies):
        super().__init__(_TorchStep(optimizer), clip, monitor, **policies)
        self._names = None if names is None else [str(name) for name in names]

    def step(self, loss=None):
        adapter = self.optimizer
        tensors = [p for p in adapter._tensors if p.grad is not None]
        if not tensors:
            return None
        in_place = _InPlace([p.grad for p in tensors])
        if self._names is not None:
            index = {id(p): i for i, p in enumerate(adapter._tensors)}
            grads = {self._names[index[id(p)]]: array for p, array in zip(tensors, in_place.arrays)}
        else:
            grads = in_place.arrays
        loss_value = None if loss is None else float(loss.detach() if isinstance(loss, _torch.Tensor) else loss)
        report = super().step(grads, loss=loss_value)
        in_place.finish()
        return report


from .backward_norm import BackwardNorm  # noqa: E402 - it uses this module's helpers
