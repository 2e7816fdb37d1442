"""Per-layer gradient statistics (and clipping) at every torch optimiser step,
and a monitor fed from a module's named parameters."""

from __future__ import annotations

import math

import torch as _torch

from .._arguments import boolean, positive_int, real, state_entries
from ..clip import clip_coefficient, clip_with_norm_
from ..monitor import GradientMonitor
from ..stats import grad_stats
from ._tensors import InPlace, as_numpy, named_parameters, scalar, trainable
from .device import device_grad_stats, needs_zero_counts, on_device_path, scale_on_device_
from .origin import NonfiniteOrigin

__all__ = ["GradGuardHook", "monitor_module"]


def monitor_module(monitor, module, step=None):
    """Feed a GradientMonitor from module.named_parameters() after backward;
    parameters without a gradient this step (frozen, unused) are left out of
    the step (GradientMonitor.update's allow_missing). Returns the step's findings."""
    present = [(name, p.grad) for name, p in module.named_parameters() if p.grad is not None]
    if on_device_path([grad for _, grad in present]):
        names = [name for name, _ in present]
        monitor.check_layers(names, allow_missing=True)
        stats = device_grad_stats(
            [grad for _, grad in present], names, full=False, count_zeros=needs_zero_counts(monitor)
        )
        return monitor.update_stats(stats, step=step, allow_missing=True)
    return monitor.update({name: as_numpy(grad) for name, grad in present}, step=step, allow_missing=True)


class GradGuardHook:
    """Per-layer gradient statistics (and optional clipping) at every optimiser step.

    hook = GradGuardHook(model, optimizer=opt, max_norm=1.0) registers an
    optimizer step pre-hook: each opt.step() (also when torch.amp.GradScaler
    calls it) first feeds the monitor the parameters' gradients by name, then
    clips them in place by their global L2 norm, with

        total_norm = ||(||g_1||, ..., ||g_n||)||_2,  g_i <- g_i * min(1, max_norm / (total_norm + CLIP_EPS))

    as torch.nn.utils.clip_grad_norm_. Under a GradScaler this sees the
    unscaled gradients (GradScaler.step unscales before it calls opt.step), and
    a step the scaler skips for inf/NaN never reaches the hook, so it stays
    skipped and leaves the monitor untouched.

    Without an optimizer, call hook() after backward (and after
    scaler.unscale_(opt) when scaling; pass scaler= so that a step with
    inf/NaN gradients, which the scaler will skip, is neither recorded nor clipped;
    skip_nonfinite=True does the same for a caller that skips such steps itself).

    parameters: a torch.nn.Module or its named_parameters(); a parameter
    whose .grad is None on a step is skipped for that step, and one frozen
    when the hook is made (requires_grad=False) joins the monitor at its first
    gradient, if it is unfrozen later. monitor: a GradientMonitor (default:
    a new one over the parameters that require a gradient). CPU tensors are read through NumPy views by
    gradguard's core; tensors on any other device (or all, under
    gradguard.torch.device_path()) on their device by torch's kernels, the
    monitor's statistics brought to the host in one transfer a step and the
    clip applied there without another. hook.last_norm is the last step's pre-clip global norm;
    hook.steps counts the steps recorded; hook.remove() detaches it.

    The monitor numbers steps by the training step: with optimizer= and
    scaler=, each scaler.update() (once per iteration, skipped or not) ends a
    step, so the steps the scaler skips leave gaps in the monitor's step
    numbers instead of shifting the later ones; otherwise each optimiser step
    (or hook() call) is one. hook(step=k) numbers a call explicitly (the
    Lightning callback passes trainer.global_step).

    find_origin=True (parameters: the module): a step whose gradients hold
    inf/NaN is reported with where the value was born, the first submodule
    whose forward output held inf/NaN or else the first parameter whose
    backward gradient did (gradguard.torch.origin: forward hooks on every
    submodule, flags kept on the device, read only for such a step).

    What the monitor sees: the gradients as they are when opt.step() is
    called, so after any clip the training loop did itself. With max_norm=
    the hook clips them and tells the monitor the norm after its clip
    (monitor.latest()'s before/after-clip values and clip rate);
    `gradguard watch` records a script's own clip the same way.
    """

    def __init__(
        self,
        parameters,
        monitor=None,
        *,
        optimizer=None,
        max_norm=None,
        scaler=None,
        skip_nonfinite=False,
        find_origin=False,
    ):
        self._named = named_parameters(parameters, frozen=True)  # a layer unfrozen later joins the monitor then
        named_trainable = trainable(self._named)
        self.names = [name for name, _ in named_trainable]
        self.monitor = GradientMonitor(names=self.names) if monitor is None else monitor
        if self.monitor.names is None:
            raise ValueError("monitor must know its layers: GradientMonitor(names=...), or pass none and one is made")
        self.max_norm = real(scalar(max_norm), "max_norm", low=0.0, allow_none=True)
        self.scaler = scaler
        self.skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        self.origin = None
        if boolean(find_origin, "find_origin"):
            if not isinstance(parameters, _torch.nn.Module):
                raise TypeError(
                    "find_origin=True needs the module itself (its submodules are hooked), not its parameters"
                )
            self.origin = NonfiniteOrigin(parameters, named_parameters=named_trainable)
        self.steps = 0
        self.training_step = 0  # the next step's number (see the class docstring)
        self.last_norm = None
        self._handle = None
        self._scaler_update = None
        if optimizer is not None:
            self._handle = optimizer.register_step_pre_hook(self._before_step)
            if scaler is not None:
                self._count_scaler_updates(scaler)

    def _count_scaler_updates(self, scaler):
        """Number steps by scaler.update() calls (one per iteration, also when
        the scaler skipped the optimiser's step): the instance's update is
        wrapped until remove()."""
        original = scaler.update

        def update(*args, **kwargs):
            self.training_step += 1
            if self.origin is not None:
                self.origin.clear()  # a step the scaler skipped leaves its flags behind
            return original(*args, **kwargs)

        scaler.update = update
        self._scaler_update = (scaler, original)

    def __call__(self, step=None, *, later_clip=None):
        """Record (and clip) the current gradients; returns the monitor's findings.
        step: the training step to record them at (default: the hook's count).
        later_clip: for a caller whose own clip follows (the Lightning
        Trainer's), a function of the norm giving the norm after that clip."""
        if step is not None:
            step = positive_int(step, "step", minimum=0)
        present = [(name, p.grad) for name, p in self._named if p.grad is not None]
        if not present:
            return []
        gradients = [grad for _, grad in present]
        on_device = on_device_path(gradients)
        if on_device:  # statistics on the device, one transfer; the clip stays there
            stats = device_grad_stats(
                gradients, [name for name, _ in present], full=False, count_zeros=needs_zero_counts(self.monitor)
            )
        else:
            in_place = InPlace(gradients)
            grads = {name: array for (name, _), array in zip(present, in_place.arrays)}
            stats = grad_stats(grads)  # one read serves the monitor and the norm
        norm = stats.global_norm
        self.last_norm = norm
        counted_here = step is None and self._scaler_update is None
        if (self.scaler is not None or self.skip_nonfinite) and not math.isfinite(norm):
            self.training_step += counted_here  # a skipped step is still a training step
            if self.origin is not None:
                self.origin.clear()
            return []  # the step will be skipped: nothing to record, nothing to clip
        clipping = self.max_norm is not None and math.isfinite(norm)
        after = norm * clip_coefficient(self.max_norm, norm) if clipping else None
        if later_clip is not None and after is None:
            after = later_clip(norm)
        recorded_at = self.training_step if step is None else step
        origin = None
        if self.origin is not None:
            origin = self.origin.origin_of(stats)
            self.origin.clear()
        findings = self.monitor.update_stats(
            stats, step=recorded_at, allow_missing=True, norm_after_clip=after, nonfinite_origin=origin
        )
        self.steps += 1
        self.training_step += counted_here
        if clipping:
            if on_device:
                coefficient = clip_coefficient(self.max_norm, norm)
                if coefficient != 1.0:  # the core's rule: a coefficient of 1 writes nothing
                    scale_on_device_(gradients, coefficient)
            else:
                clip_with_norm_(list(grads.values()), self.max_norm, norm)
                in_place.finish()
        return findings

    def state_dict(self) -> dict:
        """The monitor's state (plain lists and numbers) and the hook's step count
        and last norm: torch.save it with the model's checkpoint."""
        return {
            "monitor": self.monitor.state_dict(),
            "steps": self.steps,
            "training_step": self.training_step,
            "last_norm": self.last_norm,
        }

    def load_state_dict(self, state_dict) -> None:
        """Restore a state_dict(): the monitor resumes with its history, baselines
        and streaks, so detection after a resume is what it would have been.
        Checked whole first; nothing changes unless all of it is valid."""
        state = state_entries(state_dict, "GradGuardHook", ("monitor", "steps", "training_step", "last_norm"))
        steps = positive_int(state["steps"], "steps", minimum=0)
        training_step = positive_int(state["training_step"], "training_step", minimum=0)
        last_norm = real(state["last_norm"], "last_norm", low=0.0, allow_none=True, allow_nan=True)
        self.monitor.load_state_dict(state["monitor"])  # checked whole before it loads anything
        self.steps, self.training_step, self.last_norm = steps, training_step, last_norm

    def _before_step(self, optimizer, args, kwargs):
        self()  # a step pre-hook must return None (or replacement arguments)

    def remove(self):
        """Detach from the optimiser (a no-op without one)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.origin is not None:
            self.origin.remove()
            self.origin = None
        if self._scaler_update is not None:
            scaler, original = self._scaler_update
            if scaler.update is not original:
                del scaler.update  # the class's method shows through again
            self._scaler_update = None
