"""A PyTorch Lightning callback: gradguard's monitor (and optional clipping) on
every optimiser step of a Trainer, logged through the trainer's logger.

    trainer = lightning.Trainer(callbacks=[GradGuardCallback(max_norm=1.0)])

Needs lightning (pip install lightning, with the torch build you already use).
"""

from __future__ import annotations

import math
import warnings

try:
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - exercised only without lightning
    raise ImportError("gradguard.lightning needs PyTorch Lightning: pip install lightning") from error

from ._arguments import boolean, positive_int
from .clip import clip_coefficient
from .torch import GradGuardHook

__all__ = ["GradGuardCallback"]


class GradGuardCallback(Callback):
    """Feeds a GradientMonitor from the LightningModule's named parameters in
    on_before_optimizer_step (after backward, after Lightning has unscaled
    the gradients under mixed precision, and before the Trainer's own
    gradient_clip_val clip), then optionally clips them by their global L2
    norm (torch's clip_grad_norm_ rule) and logs, at trainer.global_step:

        gradguard/grad_norm_before_clip   the step's global norm as the monitor read it
        gradguard/grad_norm_after_clip    after this callback's clip, or the Trainer's
        gradguard/clipped, gradguard/clip_rate  whether the step was clipped; the rate over the window
        gradguard/findings                findings so far
        gradguard/flagged_layers          layers flagged now
        grad_norm/<layer> ...             every per-layer value of monitor.latest(), with per_layer=True

    Clip in one place: with both max_norm= and the Trainer's gradient_clip_val
    set, the callback warns and leaves the clip to the Trainer (recording the
    norm after it when the Trainer clips by norm). Under 16-bit mixed
    precision a step whose gradients overflowed is one the scaler skips: it is
    not recorded (the monitor's step numbers keep the gap).

    skip_nonfinite: when the gradients hold inf/NaN, set every .grad to None so
    that the optimiser skips the step (torch optimisers skip parameters
    without a gradient); the step is not recorded by the monitor. New findings
    go to Lightning's rank-zero log (logging, INFO) when report=True.
    find_origin: a step whose gradients hold inf/NaN names where the value
    was born (GradGuardHook's find_origin).
    """

    def __init__(
        self, monitor=None, *, max_norm=None, per_layer=False, skip_nonfinite=False, report=True, find_origin=False
    ):
        super().__init__()
        self.find_origin = boolean(find_origin, "find_origin")
        self.monitor = monitor
        self.max_norm = max_norm
        self.per_layer = boolean(per_layer, "per_layer")
        self.skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        self.report = boolean(report, "report")
        self.skipped_steps = 0
        self._hook = None
        self._pending = None
        self._trainer_clip = None

    def setup(self, trainer, pl_module, stage):
        max_norm = self.max_norm
        self._trainer_clip = None
        if trainer.gradient_clip_val:  # Lightning clips after on_before_optimizer_step
            if max_norm is not None:
                warnings.warn(
                    f"GradGuardCallback(max_norm={max_norm}) and Trainer(gradient_clip_val={trainer.gradient_clip_val}) "
                    "would both clip; gradguard leaves the clip to the Trainer and records the norm after it",
                    UserWarning,
                    stacklevel=2,
                )
                max_norm = None
            if trainer.gradient_clip_algorithm in (None, "norm"):
                self._trainer_clip = float(trainer.gradient_clip_val)
        scaler = getattr(trainer.precision_plugin, "scaler", None)  # 16-mixed: overflowed steps are skipped
        self._hook = GradGuardHook(
            pl_module,
            self.monitor,
            max_norm=max_norm,
            scaler=scaler,
            skip_nonfinite=self.skip_nonfinite,
            find_origin=self.find_origin,
        )
        self.monitor = self._hook.monitor  # the one given, or one the hook made over the trainable parameters
        if self._pending is not None:  # a checkpoint's state, given before the hook existed
            self._hook.load_state_dict(self._pending)
            self._pending = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        before = len(self.monitor.findings)
        recorded = self._hook.steps
        self._hook(step=trainer.global_step, later_clip=self._after_trainer_clip)
        norm = self._hook.last_norm
        if norm is not None and not math.isfinite(norm) and self.skip_nonfinite:
            self.skipped_steps += 1
            for parameter in pl_module.parameters():
                parameter.grad = None
        if norm is None or self._hook.steps == recorded:
            return  # no gradient, or a skipped step: nothing recorded, nothing to log
        flat = {
            key: float(value)
            for key, value in self.monitor.latest().items()
            if key != "gradguard/step" and (self.per_layer or key.startswith("gradguard/"))
        }
        pl_module.log_dict(flat, on_step=True, on_epoch=False)
        if self.report:
            from lightning.pytorch.utilities import rank_zero_info

            for finding in self.monitor.findings[before:]:
                rank_zero_info(f"gradguard: {finding.message}")

    def _after_trainer_clip(self, norm):
        """The norm after the Trainer's gradient_clip_val clip by norm (torch's
        clip_grad_norm_, the rule of gg.clip_coefficient), or None when it does not clip by norm."""
        if self._trainer_clip is None or not math.isfinite(norm):
            return None
        return norm * clip_coefficient(self._trainer_clip, norm)

    def state_dict(self):
        """Saved in Lightning's checkpoint: the skipped steps and the hook's state
        (the monitor's history, baselines and streaks), so a resumed fit detects
        as the uninterrupted one would."""
        hook = self._hook.state_dict() if self._hook is not None else self._pending
        return {"skipped_steps": self.skipped_steps, "hook": hook}

    def load_state_dict(self, state_dict):
        """Restore state_dict(); the hook's part waits for setup when it comes first."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"GradGuardCallback.load_state_dict takes a dict, not {type(state_dict).__name__}")
        skipped = positive_int(state_dict.get("skipped_steps", 0), "skipped_steps", minimum=0)
        hook = state_dict.get("hook")
        if hook is not None and self._hook is not None:
            self._hook.load_state_dict(hook)
        elif hook is not None:
            self._pending = hook
        self.skipped_steps = skipped
