"""One training step's gradients into a monitor, read before any clip of the step.

The pieces every torch integration shares: `read_stats` (one read of named
gradients: on their device through torch's kernels, or through gradguard's
core on NumPy views) and `StepRecorder` (the watcher's and the Hugging Face
callback's: statistics taken when the loop's clip is about to run, the norm
after it measured at the step, gradguard's own clip and skip applied last).
"""

from __future__ import annotations

import math

from ..clip import clip_coefficient, clip_with_norm_, global_norm
from ..stats import STATS_FIELDS, GradStats, grad_stats
from ._tensors import InPlace, as_numpy
from .device import device_grad_stats, device_total_norm, needs_zero_counts, on_device_path, scale_on_device_

__all__ = ["read_stats", "StepRecorder"]


def read_stats(present, monitor=None):
    """GradStats of [(name, gradient)], in one read: on the gradients' device
    (one transfer of the table; the counts of exact zeros only when monitor's
    dead-layer test needs them) or by gradguard's core on NumPy views. With a
    monitor, its layers are checked first (check_layers), so a refusal comes
    before any work."""
    names = [name for name, _ in present]
    gradients = [gradient for _, gradient in present]
    if monitor is not None:
        monitor.check_layers(names, allow_missing=True)
    if on_device_path(gradients):
        return device_grad_stats(gradients, names, full=False, count_zeros=needs_zero_counts(monitor))
    return grad_stats({name: as_numpy(gradient) for name, gradient in present})


def _norm(gradients) -> float:
    if on_device_path(gradients):
        return device_total_norm(gradients)
    return global_norm([as_numpy(gradient) for gradient in gradients])


class StepRecorder:
    """Feeds `monitor` with the gradients of `named` [(name, parameter)] once per
    training step, as they were before the loop's clip.

    before_clip() (gradguard.torch.clip_tap calls it when a torch clip is
    about to touch these parameters) takes the step's statistics then; at_step()
    (when the optimiser is about to step) takes them now when no clip came
    first, measures the norm after the loop's clip when one did, applies
    gradguard's own clip (max_norm, torch's rule) and skip (skip_nonfinite:
    every .grad set to None, so torch's optimisers leave every parameter
    alone), and records the step with both norms. every=N records one step in
    N. step numbers: the training step, counted here (skipped() counts a step
    a GradScaler skipped) unless at_step is given one.
    """

    def __init__(self, named, monitor, *, max_norm=None, skip_nonfinite=False, every=1, origin=None):
        self.named = list(named)
        self.ids = {id(parameter) for _, parameter in self.named}
        self.monitor = monitor
        self.max_norm = max_norm
        self.skip_nonfinite = skip_nonfinite
        self.every = every
        self.step = 0  # the next training step's number
        self.recorded = 0
        self.scaler_skips = 0  # steps a GradScaler skipped (overflowed gradients): not recorded
        self.guard_skips = 0  # steps skip_nonfinite skipped
        self.last_norm = None
        self._pending = None  # statistics taken before this step's first clip
        self.origin = origin  # a gradguard.torch.origin.NonfiniteOrigin watching these parameters' steps

    def _present(self):
        return [(name, p.grad) for name, p in self.named if p.grad is not None]

    def _sampled(self, step) -> bool:
        return step % self.every == 0

    def touches(self, parameters) -> bool:
        """Whether a clip of these parameters clips some of this recorder's."""
        return any(id(parameter) in self.ids for parameter in parameters)

    def before_clip(self) -> None:
        """The loop is about to clip: keep the step's statistics as they are now
        (the first clip of a step counts: a second one sees clipped gradients)."""
        if self._pending is None and self._sampled(self.step):
            present = self._present()
            if present:
                self._pending = read_stats(present, self.monitor)

    def _nonfinite_origin(self, stats):
        if self.origin is None:
            return None
        origin = self.origin.origin_of(stats)
        self.origin.clear()
        return origin

    def adopt(self, stats) -> None:
        """Statistics a caller took before this recorder existed (the watcher, at the
        clip before an optimiser's first step), named by str(id(parameter)): kept as
        this step's pre-clip statistics when they cover exactly its present parameters."""
        present = [(name, p) for name, p in self.named if p.grad is not None]
        keys = [str(id(p)) for _, p in present]
        if self._pending is not None or stats.names is None or sorted(keys) != sorted(stats.names):
            return
        row = {name: index for index, name in enumerate(stats.names)}
        order = [row[key] for key in keys]
        fields = {field: getattr(stats, field)[order] for field in STATS_FIELDS}
        ndim = None if stats.ndim is None else stats.ndim[order]
        names = tuple(name for name, _ in present)
        self._pending = GradStats(names=names, global_norm=stats.global_norm, ndim=ndim, **fields)

    def skipped(self) -> None:
        """A GradScaler skipped this step (its gradients overflowed): not recorded, the step counted."""
        self._pending = None
        if self.origin is not None:
            self.origin.clear()
        self.scaler_skips += 1
        self.step += 1

    def at_step(self, step=None, *, unrecorded_if_nonfinite=False) -> list:
        """The optimiser is about to step: record it, clip and skip as asked;
        returns the monitor's findings. unrecorded_if_nonfinite: a loss scaler
        will skip a step with inf/NaN gradients (the Trainer's fp16), so such a
        step is counted as skipped, not recorded."""
        pending, self._pending = self._pending, None
        if step is None:
            step = self.step
        self.step = step + 1
        if not self._sampled(step):
            return []
        present = self._present()
        if not present:
            return []
        gradients = [gradient for _, gradient in present]
        stats = pending if pending is not None else read_stats(present, self.monitor)
        norm = stats.global_norm
        self.last_norm = norm
        if unrecorded_if_nonfinite and not math.isfinite(norm):
            self.scaler_skips += 1
            if self.origin is not None:
                self.origin.clear()
            return []
        # The loop's clip (when one ran): the norm now is the norm after it.
        after = _norm(gradients) if pending is not None else norm
        if self.max_norm is not None and math.isfinite(after):
            coefficient = clip_coefficient(self.max_norm, after)
            if coefficient != 1.0:  # the core's rule: a coefficient of 1 writes nothing
                self._clip(gradients, self.max_norm, after)
                after *= coefficient
        findings = self.monitor.update_stats(
            stats, step=step, allow_missing=True, norm_after_clip=after, nonfinite_origin=self._nonfinite_origin(stats)
        )
        self.recorded += 1
        if self.skip_nonfinite and not math.isfinite(norm):
            self.guard_skips += 1
            for _, parameter in self.named:
                parameter.grad = None  # torch's optimisers leave a parameter without a gradient alone
        return findings

    @staticmethod
    def _clip(gradients, max_norm, norm):
        """gradients *= clip_coefficient(max_norm, norm), on their device or by the core."""
        if on_device_path(gradients):
            scale_on_device_(gradients, clip_coefficient(max_norm, norm))
            return
        in_place = InPlace(gradients)
        clip_with_norm_(in_place.arrays, max_norm, norm)
        in_place.finish()

    def state_dict(self) -> dict:
        """The monitor's state and the recorder's counts (plain lists and numbers)."""
        return {
            "monitor": self.monitor.state_dict(),
            "step": self.step,
            "recorded": self.recorded,
            "scaler_skips": self.scaler_skips,
            "guard_skips": self.guard_skips,
        }

    def load_state_dict(self, state_dict) -> None:
        """Restore state_dict(), checked whole before anything changes."""
        from .._arguments import positive_int, state_entries

        state = state_entries(
            state_dict, "StepRecorder", ("monitor", "step", "recorded", "scaler_skips", "guard_skips")
        )
        counts = {
            key: positive_int(state[key], key, minimum=0) for key in ("step", "recorded", "scaler_skips", "guard_skips")
        }
        self.monitor.load_state_dict(state["monitor"])
        self.step, self.recorded = counts["step"], counts["recorded"]
        self.scaler_skips, self.guard_skips = counts["scaler_skips"], counts["guard_skips"]
