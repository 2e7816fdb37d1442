"""A Hugging Face Trainer callback: gradguard's monitor fed at the point where
the gradients are still unclipped, its values in the Trainer's own logs.

    trainer = Trainer(..., callbacks=[gradguard.transformers.GradGuardCallback()])

Where it reads the gradients. The Trainer's step (transformers 5) runs, after
the last micro-batch's backward: `_clip_grad_norm` (Accelerate's
clip_grad_norm_: unscale the fp16 gradients, take the norm, clip at
args.max_grad_norm), then `on_pre_optimizer_step`, `optimizer.step()`,
`on_optimizer_step`, the scheduler, `zero_grad`, `global_step += 1`,
`on_step_end` and the log. A callback at on_pre_optimizer_step sees clipped
gradients. This one takes the statistics when torch's clip is about to run
(gradguard.torch.clip_tap, set while training): after the unscale and the
accumulation, before the clip; at on_pre_optimizer_step it measures the norm
after the clip, applies its own guard actions and records the step at
state.global_step. With max_grad_norm=0 (no clip) it reads at on_pre_optimizer_step.

Needs transformers (and accelerate, which its Trainer needs).
"""

from __future__ import annotations

import sys
import warnings

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
    from transformers.utils import logging as _logging
except ImportError as error:  # pragma: no cover - exercised only without transformers
    raise ImportError("gradguard.transformers needs transformers: pip install transformers accelerate") from error

from ._arguments import boolean, real
from .monitor import GradientMonitor
from .torch import clip_tap
from .torch._tensors import named_parameters, trainable
from .torch.origin import NonfiniteOrigin
from .torch.recorder import StepRecorder

__all__ = ["GradGuardCallback"]

_logger = _logging.get_logger("gradguard")


class GradGuardCallback(TrainerCallback, ExportableState):
    """Per-layer gradient statistics of every optimiser step of a Trainer,
    before its clip, with values in the Trainer's logs:

        gradguard/grad_norm_before_clip   equals the Trainer's own grad_norm
        gradguard/grad_norm_after_clip    after the Trainer's clip (and max_norm's)
        gradguard/clipped, gradguard/clip_rate, gradguard/findings, gradguard/flagged_layers
        grad_norm/<layer>, ...            per layer, with per_layer=True

    They are added to each training log (on_log) before the reporting
    integrations (W&B, TensorBoard, MLflow, ...) read it: the callback moves
    itself ahead of them when training begins. New findings are logged as
    warnings (logger "gradguard") as they happen.

    max_norm: also clip at this global L2 norm after the Trainer's own clip
    (max_grad_norm; with both set the smaller bound wins). skip_nonfinite:
    a step whose gradients hold inf/NaN is skipped (every .grad set to None
    before optimizer.step(); with fp16 the Trainer's GradScaler skips such
    steps itself, and they are counted, not recorded). find_origin: a step
    whose gradients hold inf/NaN names where the value was born (forward
    hooks on every submodule, gradguard.torch.origin). monitor_settings:
    GradientMonitor's keyword settings (a dict, so that the Trainer can make
    the callback again from its checkpoint).

    Checkpoints: the monitor's state (history, baselines, streaks, findings)
    is saved in the Trainer's checkpoint (trainer_state.json's
    stateful_callbacks) and restored on resume when
    TrainingArguments(restore_callback_states_from_checkpoint=True), the
    Trainer's switch for every stateful callback.
    """

    def __init__(self, max_norm=None, skip_nonfinite=False, per_layer=False, find_origin=False, monitor_settings=None):
        self.max_norm = real(max_norm, "max_norm", low=0.0, allow_none=True)
        self.find_origin = boolean(find_origin, "find_origin")
        self.skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        self.per_layer = boolean(per_layer, "per_layer")
        self.monitor_settings = dict(monitor_settings or {})
        GradientMonitor(**self.monitor_settings)  # refused settings are refused here
        self.monitor = None
        self.recorder = None
        self.checkpoint = None  # a checkpoint's state, restored at on_train_begin
        self._logged_step = -1
        self._listening = False

    # -- the Trainer's events ------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        every = named_parameters(model, frozen=True)
        named = trainable(every)
        self.monitor = GradientMonitor(names=[name for name, _ in named], **self.monitor_settings)
        origin = NonfiniteOrigin(model, named_parameters=named) if self.find_origin else None
        self.recorder = StepRecorder(
            every, self.monitor, max_norm=self.max_norm, skip_nonfinite=self.skip_nonfinite, origin=origin
        )
        if self.checkpoint is not None:
            self.recorder.load_state_dict(self.checkpoint)  # checked whole before it loads
            self.checkpoint = None
        elif state.global_step > 0:
            warnings.warn(
                f"GradGuardCallback: training resumes at step {state.global_step} without gradguard's state, so "
                "the monitor starts cold; TrainingArguments(restore_callback_states_from_checkpoint=True) restores it",
                UserWarning,
                stacklevel=2,
            )
        if not self._listening:
            clip_tap.add_listener(self._before_clip)
            self._listening = True
        self._go_first()

    def _before_clip(self, parameters):
        if self.recorder is not None and self.recorder.touches(parameters):
            self.recorder.before_clip()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        findings = self.recorder.at_step(step=state.global_step, unrecorded_if_nonfinite=bool(args.fp16))
        for finding in findings:
            _logger.warning(f"gradguard: step {finding.step}: {finding.kind}: {finding.message}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.monitor is None or self.monitor.recorded is None:
            return
        latest = self.monitor.latest()
        step = latest.get("gradguard/step", -1)
        if step <= self._logged_step or "loss" not in logs and "grad_norm" not in logs:
            return  # an evaluation's log, or no step recorded since the last log
        self._logged_step = step
        values = {
            key: float(value)
            for key, value in latest.items()
            if key != "gradguard/step" and (self.per_layer or key.startswith("gradguard/"))
        }
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the Trainer kept a copy before calling on_log

    def on_train_end(self, args, state, control, **kwargs):
        if self._listening:
            clip_tap.remove_listener(self._before_clip)
            self._listening = False
        if self.recorder is not None and self.recorder.origin is not None:
            self.recorder.origin.remove()

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        """The Trainer's ExportableState: the constructor's arguments and the
        recorder's state (the monitor's, as plain lists and numbers)."""
        saved = self.recorder.state_dict() if self.recorder is not None else self.checkpoint
        return {
            "args": {
                "max_norm": self.max_norm,
                "skip_nonfinite": self.skip_nonfinite,
                "per_layer": self.per_layer,
                "find_origin": self.find_origin,
                "monitor_settings": self.monitor_settings,
            },
            "attributes": {"checkpoint": saved},
        }

    def _go_first(self):
        """Move this callback to the front of the Trainer's CallbackHandler, so that
        its on_log adds its values before the reporting integrations log them.
        The handler is not passed to callbacks: it is the caller up the stack
        (CallbackHandler.call_event). Moving the current item to the front of
        the list being iterated keeps every later item where it was."""
        frame = sys._getframe(1)
        while frame is not None:
            handler = frame.f_locals.get("self")
            callbacks = getattr(handler, "callbacks", None)
            if type(handler).__name__ == "CallbackHandler" and isinstance(callbacks, list) and self in callbacks:
                callbacks.remove(self)
                callbacks.insert(0, self)
                return
            frame = frame.f_back
