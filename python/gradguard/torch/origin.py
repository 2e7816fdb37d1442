"""Where a step's inf/NaN was born.

Once a non-finite value appears, backward spreads it to every layer below, so
the layers holding NaN gradients say where it ended up, not where it started.
NonfiniteOrigin watches the step as it runs:

- a forward hook on every module keeps the float32 sum of its output, a 0-d
  tensor on the output's device that is NaN or inf when an element is (no
  sync per module; one extra read of each module's output), appended in the
  order the modules finish (a child finishes before its parent, so the
  innermost module that produced the value comes first);
- a post-accumulate-grad hook on every parameter records the order in which
  backward finishes their gradients (Python only, no device work).

origin(stats) is asked only for a step whose statistics hold inf/NaN: it
stacks the step's flags per device and reads them in one transfer each, and
names the first module whose output was not finite ("forward output of
`blocks.3.attn`"), or else the first parameter in backward order whose
gradient was not finite ("backward gradient of `head.weight`": the loss, or
a backward that made it). Healthy steps read nothing. clear() starts a step.
"""

from __future__ import annotations

import math

import torch as _torch

from ._tensors import trainable
from .device import to_host

__all__ = ["NonfiniteOrigin"]


def _tensors(output):
    """The floating tensors of a module's output (a tensor, a tuple or list, a dict, a ModelOutput)."""
    if isinstance(output, _torch.Tensor):
        return [output] if output.is_floating_point() or output.is_complex() else []
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)] if len(output) < 64 else []
    return []


class NonfiniteOrigin:
    """Forward and backward watch over `module` (its submodules and parameters), or,
    with module=None and global_hooks=True, over every module of the process
    (torch's global module forward hook; names from name_of(module))."""

    def __init__(self, module=None, *, named_parameters=None, name_of=None):
        self._calls = []  # (module, 0-d bool tensor: its output held inf/NaN), in the order the modules finished
        self._backward = []  # parameter names in the order backward finished their gradients
        self._handles = []
        self._names = {}
        self._name_of = name_of
        if module is not None:
            self._names = {id(m): name or type(m).__name__ for name, m in module.named_modules()}
            for _, submodule in module.named_modules():
                self._handles.append(submodule.register_forward_hook(self._after_forward))
            if named_parameters is None:
                named_parameters = trainable(module.named_parameters())
        else:
            from torch.nn.modules.module import register_module_forward_hook

            self._handles.append(register_module_forward_hook(self._after_forward))
        self.add_parameters(named_parameters or [])

    def add_parameters(self, named_parameters) -> None:
        """Record the backward order of these (name, parameter) pairs too."""
        for name, parameter in named_parameters:
            self._handles.append(parameter.register_post_accumulate_grad_hook(self._backward_hook(name)))

    def _after_forward(self, module, inputs, output):  # noqa: ARG002 - torch's hook signature
        tensors = _tensors(output)
        if not tensors or not _torch.is_grad_enabled():
            return
        with _torch.no_grad():
            # One reduction per output: a float32 sum is NaN or inf when an element is
            # (a sum of finite values above 3e38 would read as inf: not a real activation).
            total = tensors[0].sum(dtype=_torch.float32)
            for tensor in tensors[1:]:
                if tensor.device == total.device:
                    total = total + tensor.sum(dtype=_torch.float32)
        self._calls.append((module, total))

    def _backward_hook(self, name):
        def hook(parameter):
            self._backward.append(name)

        return hook

    def clear(self) -> None:
        """Start a new step: forget the flags and the backward order."""
        self._calls.clear()
        self._backward.clear()

    def _module_name(self, module):
        if id(module) in self._names:
            return self._names[id(module)]
        if self._name_of is not None:
            return self._name_of(module)
        return type(module).__name__

    def origin(self, nonfinite):
        """Where this step's inf/NaN started, in words (None when nothing says).
        nonfinite: the names of the parameters whose gradient held inf/NaN this step."""
        by_device = {}
        for position, (_, bad) in enumerate(self._calls):
            by_device.setdefault(bad.device, []).append(position)
        first = None
        for positions in by_device.values():
            sums = to_host(_torch.stack([self._calls[p][1] for p in positions]))  # one transfer per device
            hits = [p for p, total in zip(positions, sums) if not math.isfinite(float(total))]
            if hits and (first is None or hits[0] < first):
                first = hits[0]
        if first is not None:
            return f"forward output of `{self._module_name(self._calls[first][0])}`"
        nonfinite = set(nonfinite)
        for name in self._backward:
            if name in nonfinite:
                return f"backward gradient of `{name}` (the forward outputs were finite: the loss, or a backward op)"
        return None

    def origin_of(self, stats):
        """origin() for a step's GradStats (None when they hold no inf/NaN: nothing is read)."""
        bad = (stats.n_nan + stats.n_inf) > 0
        if not bad.any():
            return None
        return self.origin([name for name, flag in zip(stats.names, bad) if flag])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()
