"""The gradients' global norm taken during torch's backward pass.

torch hands each parameter's gradient to a post-accumulate-grad hook the
moment it is complete, while it is still in cache. BackwardNorm takes the
gradient's norm partial there (and, for a monitor, its statistics partial),
so when backward returns the global norm is known without another read of
memory, and the clip folds into the optimiser's update: a gg.optim step given
grad_norm= reads each gradient once, for the update itself.
"""

from __future__ import annotations

import math

import torch

from ..distributed import combine_norm_over_ranks, combine_stats_over_ranks, step_with_global_norm
from ..partials import (
    RescaledPartialsNeeded,
    combine_norm_partials,
    combine_stats_partials,
    norm_partials,
    stats_partials,
)
from ..stats import GradStats
from ._tensors import as_numpy, dense_view, named_parameters
from .device import accumulation_dtype, device_grad_stats, on_device_path, to_host

__all__ = ["BackwardNorm"]


class _DeviceNorm:
    """A value kept on the device by a hook (a gradient's norm, or the gradient itself)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class BackwardNorm:
    """Global gradient norm (and per-layer statistics) accumulated during backward.

        tracker = BackwardNorm(model)                       # or model.named_parameters()
        opt = gg.optim.AdamW([p.detach().numpy() for _, p in tracker.named], max_grad_norm=1.0)
        loss.backward()                                     # partials taken as gradients complete
        tracker.step(opt)                                   # opt.step(grads, grad_norm=tracker.total_norm())

    total_norm() = (sum over parameters with a gradient of ||g||_2^2)^(1/2),
    bit for bit gg.global_norm of those gradients in parameter order (each
    parameter's partial is combined in that order, whatever order backward
    produced them in). With `monitor` (a GradientMonitor made with these names)
    or stats=True, each hook also takes the statistics partial (the same read),
    and step() feeds the monitor (update_stats) before stepping.

    A parameter's partial is of its gradient as of the last hook call: under
    gradient accumulation the hook runs after every micro-batch (each call
    reads the gradient again) and the last one counts. reset() forgets the
    partials (step() does it); call it, or zero the gradients, between steps.
    Parameters without a gradient since the last reset are left out, as
    clip_grad_norm_ leaves out .grad None. Gradients on a device (or any,
    under gradguard.torch.device_path()) keep their norm on the device from the
    hook; total_norm() and grad_stats() then take one transfer, and step()
    refuses them (gg.optim steps CPU arrays). remove() (or leaving a with block) detaches the hooks.

    Not for torch DDP / FSDP: their reductions write the gradients after these
    hooks run; use gradguard.distributed on the reduced gradients instead.
    """

    def __init__(self, parameters, *, monitor=None, stats: bool = False):
        if not hasattr(torch.Tensor, "register_post_accumulate_grad_hook"):
            raise RuntimeError("BackwardNorm needs torch >= 2.1 (Tensor.register_post_accumulate_grad_hook)")
        self.named = named_parameters(parameters)
        self.names = [name for name, _ in self.named]
        if monitor is not None and (monitor.names is None or set(monitor.names) != set(self.names)):
            raise ValueError(
                "monitor must know its layers, these parameters: GradientMonitor(names=[name for name, _ in ...])"
            )
        self.monitor = monitor
        self.stats_wanted = bool(stats) or monitor is not None
        self._norms: list = [None] * len(self.named)
        self._stats: list = [None] * len(self.named)
        self._handles = [
            tensor.register_post_accumulate_grad_hook(self._hook_for(index))
            for index, (_, tensor) in enumerate(self.named)
        ]

    def _hook_for(self, index):
        def take(tensor):
            self._take(index, tensor.grad)

        return take

    def _take(self, index, grad):
        if grad is None:
            return
        if grad.layout != torch.strided:
            raise TypeError(
                f"BackwardNorm: the gradient of {self.names[index]!r} is {grad.layout}; "
                "only dense gradients are supported (for an embedding, use sparse=False)"
            )
        if on_device_path([grad]):
            # On the device: the norm taken now, while the gradient is in cache, and kept
            # there (no transfer); statistics, if wanted, read the gradient when asked.
            self._norms[index] = _DeviceNorm(
                torch.linalg.vector_norm(grad.detach(), dtype=accumulation_dtype(grad.dtype))
            )
            if self.stats_wanted:
                self._stats[index] = _DeviceNorm(grad)
            return
        view = dense_view(grad)
        array = as_numpy(view if view is not None else grad.contiguous())
        named = {self.names[index]: array}
        self._norms[index] = norm_partials(named)
        if self.stats_wanted:
            self._stats[index] = stats_partials(named)

    def present(self) -> list:
        """Names of the parameters whose gradient was seen since the last reset."""
        return [name for name, part in zip(self.names, self._norms) if part is not None]

    def total_norm(self, *, group=None) -> float:
        """The global L2 norm of the gradients seen since the last reset (0.0 for none).
        group (a torch.distributed process group or an mpi4py communicator):
        over every rank's BackwardNorm, each rank holding its own parameters
        (pipeline parallel), combined in rank order on every rank."""
        if self._on_device(self._norms):
            return self._device_total()
        return self._combined(self._norms, group, norm_partials, combine_norm_partials, combine_norm_over_ranks)

    def _device_total(self):
        """sqrt(sum of the squared norms taken in the hooks), summed on the device: one transfer."""
        norms = [part.value for part in self._norms if part is not None]
        first = norms[0].device
        total = torch.linalg.vector_norm(torch.stack([n.to(device=first, dtype=torch.float64) for n in norms]))
        return float(to_host(total))

    def grad_stats(self, *, group=None) -> GradStats:
        """gg.grad_stats of the gradients seen since the last reset, by name (needs
        stats=True or a monitor); group as for total_norm."""
        if not self.stats_wanted:
            raise RuntimeError("this BackwardNorm takes no statistics: create it with stats=True or a monitor")
        if self._on_device(self._stats):
            present = [(name, part.value) for name, part in zip(self.names, self._stats) if part is not None]
            return device_grad_stats([grad for _, grad in present], [name for name, _ in present])
        return self._combined(self._stats, group, stats_partials, combine_stats_partials, combine_stats_over_ranks)

    def _on_device(self, slots):
        return any(isinstance(part, _DeviceNorm) for part in slots)

    def _combined(self, slots, group, take, combine_here, combine_over_ranks, check=None):
        """The slots' partials combined, here or over the group's ranks (check: run
        on every rank inside the exchange); the rare overflow-safe path reads the
        gradients once more, for rescaled partials."""

        def combine(parts):
            if group is None:
                if check is not None:
                    check()
                return combine_here(parts)
            return combine_over_ranks(parts, group=group, check=check)

        present = [(name, tensor, part) for (name, tensor), part in zip(self.named, slots) if part is not None]
        try:
            return combine([part for _, _, part in present])
        except RescaledPartialsNeeded:  # every rank sees it alike, so every rank takes this path
            return combine(
                [take({name: as_numpy(tensor.grad.contiguous())}, rescaled=True) for name, tensor, _ in present]
            )

    def step(
        self, optimizer, *, loss_scaler=None, return_report: bool = False, skip_nonfinite: bool = False, group=None
    ):
        """optimizer.step(grads, grad_norm=total_norm()) for a gg.optim optimiser
        over these parameters in this order, then feed the monitor (if any) and
        reset. With group (pipeline parallel: each rank steps its own
        parameters), the norm and the monitor's statistics are over every rank's
        gradients, and a step with inf/NaN on any rank is skipped on every rank.

        The step is checked first (optimizer.check_step; with group, on every
        rank inside the norm's exchange, so a refusal on one rank raises on
        all): a refused step raises with nothing written, the monitor not fed
        and the partials kept. Returns what optimizer.step returns."""
        grads = {
            name: (None if part is None or tensor.grad is None else as_numpy(tensor.grad))
            for (name, tensor), part in zip(self.named, self._norms)
        }
        if getattr(optimizer, "names", None) is None:
            grads = list(grads.values())
        if not hasattr(optimizer, "check_step"):
            raise TypeError(f"optimizer must be a gg.optim optimiser, not {type(optimizer).__name__}")
        if self._on_device(self._norms):
            raise TypeError(
                "gg.optim steps arrays in CPU memory and these gradients are on a device: take "
                "total_norm() and clip with gradguard.torch.clip_grads_with_norm_, then step torch's optimiser"
            )

        def check():
            optimizer.check_step(grads, loss_scaler=loss_scaler)

        total = self._combined(
            self._norms, group, norm_partials, combine_norm_partials, combine_norm_over_ranks, check=check
        )
        stats = None
        if self.monitor is not None and (math.isfinite(total) or (loss_scaler is None and not skip_nonfinite)):
            stats = self.grad_stats(group=group)
        if group is not None:
            result = step_with_global_norm(
                optimizer, grads, total, loss_scaler=loss_scaler, return_report=return_report
            )
        else:
            # Here a NaN total leaves the norm to the step, which then follows its own rules for it.
            inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
            result = optimizer.step(
                grads,
                loss_scaler=loss_scaler,
                return_report=return_report,
                skip_nonfinite=skip_nonfinite,
                grad_norm=None if math.isnan(total) else total * inverse_scale,
            )
        if stats is not None:
            self.monitor.update_stats(stats, allow_missing=True)
        self.reset()
        return result

    def reset(self) -> None:
        """Forget the partials taken so far."""
        self._norms = [None] * len(self.named)
        self._stats = [None] * len(self.named)

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.remove()
