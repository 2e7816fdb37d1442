"""gg.Guard around a torch optimiser."""

from __future__ import annotations

import copy

import torch as _torch

from .._arguments import duplicates, real
from ..clip import clip_coefficient, clip_with_norm_, global_norm
from ..guard import Guard as _Guard
from ..optim import StepReport
from ..stats import grad_stats
from ._tensors import InPlace, as_numpy
from .device import device_grad_stats, needs_zero_counts, on_device_path, scale_on_device_

__all__ = ["Guard"]


class _TorchStep:
    """A torch optimiser seen through gg.optim's interface, for gg.Guard."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups  # torch's own dicts: gg.Guard scales their "lr"
        self.max_grad_norm = None
        self.tensors = [p for group in optimizer.param_groups for p in group["params"]]
        self.in_place = None  # this step's gradients as arrays (Guard.step sets it)

        self.on_device = None  # this step's gradients as tensors, when they take the device path

    @property
    def params(self):
        if on_device_path(self.tensors):
            return [p.data for p in self.tensors]
        return [as_numpy(p.data) for p in self.tensors]

    def check_step(self, grads):
        """Nothing to refuse: the gradients are the parameters' own .grad, read through views."""

    def step(self, grads, return_report=False, skip_nonfinite=False, grad_norm=None):
        coefficient = 1.0
        if self.max_grad_norm is not None and grad_norm is not None:
            if self.on_device is not None:
                coefficient = clip_coefficient(self.max_grad_norm, grad_norm)
                if coefficient != 1.0:  # the core's rule: a coefficient of 1 writes nothing
                    scale_on_device_(self.on_device, coefficient)
            else:
                coefficient = clip_with_norm_(grads, self.max_grad_norm, grad_norm)
        if self.in_place is not None:
            # A gradient that is not one dense block was clipped in a copy: write it back before torch reads it.
            self.in_place.finish()
        self.optimizer.step()
        return StepReport(grad_norm, coefficient, False, ())

    def state_dict(self):
        return copy.deepcopy(self.optimizer.state_dict())

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(copy.deepcopy(state))


class Guard(_Guard):
    """gg.Guard around a torch optimiser: `guard.step()` after backward reads the
    .grad of the optimiser's parameters through NumPy views (any dense memory
    format; None gradients skipped), or on their device through torch's kernels
    (gradguard.torch.device: one transfer of statistics a step), skips the step when they hold inf/NaN,
    clips them in place at the guard's threshold, then calls optimizer.step().
    Learning-rate backoff scales every parameter group alike; snapshots copy
    the parameters and the optimiser's state_dict. `names` (e.g. a module's
    named_parameters() names, in the optimiser's order) label the monitor's layers.
    """

    def __init__(self, optimizer, clip=None, monitor=None, *, names=None, **policies):
        super().__init__(_TorchStep(optimizer), clip, monitor, **policies)
        self._names = None if names is None else [str(name) for name in names]
        if self._names is not None and (duplicates(self._names) or len(self._names) != len(self.optimizer.tensors)):
            raise ValueError(
                f"names must name each of the optimiser's {len(self.optimizer.tensors)} parameters once; "
                f"got {len(self._names)} names, repeated: {duplicates(self._names)}"
            )

    def step(self, loss=None):
        adapter = self.optimizer
        tensors = [p for p in adapter.tensors if p.grad is not None]
        if not tensors:
            return None
        # Named by position when no names were given, so that a parameter without a
        # gradient this step is an absent layer for the monitor, not a shifted list.
        names = self._names if self._names is not None else [str(i) for i in range(len(adapter.tensors))]
        index = {id(p): i for i, p in enumerate(adapter.tensors)}
        step_names = [names[index[id(p)]] for p in tensors]
        loss_value = None if loss is None else float(loss.detach() if isinstance(loss, _torch.Tensor) else loss)
        allow_missing = len(tensors) < len(adapter.tensors)
        gradients = [p.grad for p in tensors]
        try:
            if on_device_path(gradients):
                return self._step_on_device(gradients, step_names, loss_value, allow_missing)
            adapter.in_place = InPlace(gradients)
            grads = dict(zip(step_names, adapter.in_place.arrays))
            loss_value = self._checked(grads, loss_value, allow_missing)
            # Read before the step: the clip writes into these gradients, and the
            # monitor records them as they were (its norm before the clip).
            if self.monitor is None:  # the norm alone: one pass, no statistics
                return self._policies(grads, global_norm(grads), loss_value, None)
            stats = grad_stats(grads)
            return self._policies(
                grads, stats.global_norm, loss_value, self._recorder(stats, allow_missing, loss_value)
            )
        finally:
            adapter.in_place = adapter.on_device = None

    def _step_on_device(self, gradients, names, loss, allow_missing):
        """The guarded step with the gradients on their device: their statistics
        in one transfer (the norm and the monitor's record), the clip on the device."""
        loss = real(loss, "loss", allow_none=True, allow_nan=True)
        if self.monitor is not None:
            self.monitor.check_layers(names, allow_missing=allow_missing)
        stats = device_grad_stats(gradients, names, full=False, count_zeros=needs_zero_counts(self.monitor))
        self.optimizer.on_device = gradients
        return self._policies(
            dict(zip(names, gradients)), stats.global_norm, loss, self._recorder(stats, allow_missing, loss)
        )
