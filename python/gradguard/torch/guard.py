"""gg.Guard around a torch optimiser."""

from __future__ import annotations

import copy

import torch as _torch

from .._arguments import duplicates
from ..clip import clip_with_norm_
from ..guard import Guard as _Guard
from ..optim import StepReport
from ._tensors import InPlace, as_numpy

__all__ = ["Guard"]


class _TorchStep:
    """A torch optimiser seen through gg.optim's interface, for gg.Guard."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups  # torch's own dicts: gg.Guard scales their "lr"
        self.max_grad_norm = None
        self.tensors = [p for group in optimizer.param_groups for p in group["params"]]
        self.in_place = None  # this step's gradients as arrays (Guard.step sets it)

    @property
    def params(self):
        return [as_numpy(p.data) for p in self.tensors]

    def check_step(self, grads):
        """Nothing to refuse: the gradients are the parameters' own .grad, read through views."""

    def step(self, grads, return_report=False, skip_nonfinite=False, grad_norm=None):
        coefficient = 1.0
        if self.max_grad_norm is not None and grad_norm is not None:
            coefficient = clip_with_norm_(grads, self.max_grad_norm, grad_norm)
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
    format; None gradients skipped), skips the step when they hold inf/NaN,
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
        adapter.in_place = InPlace([p.grad for p in tensors])
        # Named by position when no names were given, so that a parameter without a
        # gradient this step is an absent layer for the monitor, not a shifted list.
        names = self._names if self._names is not None else [str(i) for i in range(len(adapter.tensors))]
        index = {id(p): i for i, p in enumerate(adapter.tensors)}
        grads = {names[index[id(p)]]: array for p, array in zip(tensors, adapter.in_place.arrays)}
        loss_value = None if loss is None else float(loss.detach() if isinstance(loss, _torch.Tensor) else loss)
        try:
            return super().step(grads, loss=loss_value, allow_missing=len(tensors) < len(adapter.tensors))
        finally:
            adapter.in_place = None
