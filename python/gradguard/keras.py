"""A Keras 3 callback: gradguard's monitor on every optimiser step of
model.fit, with optional clipping by the global norm.

    model.fit(x, y, callbacks=[gradguard.keras.GradGuardCallback(max_norm=1.0)])

The callback sees the gradients where Keras hands them to the optimiser
(optimizer.apply), on the host, so it needs the step to run eagerly: it runs
on the torch backend (eager unless the model is compiled with
jit_compile=True, which is refused with that advice). The jax and tensorflow
backends are refused at fit time: their trainers apply the optimiser inside
a stateless or compiled step this callback cannot read from. Needs keras >= 3.
"""

from __future__ import annotations

import math

try:
    import keras
except ImportError as error:  # pragma: no cover - exercised only without keras
    raise ImportError("gradguard.keras needs Keras 3: pip install keras") from error

import numpy as np

from .clip import clip_coefficient, global_norm
from .monitor import GradientMonitor
from .stats import grad_stats

__all__ = ["GradGuardCallback"]


def _to_numpy(name, gradient):
    """A gradient's values on the host; a tensor being traced by jit has none."""
    try:
        return np.asarray(keras.ops.convert_to_numpy(gradient))
    except Exception:  # noqa: BLE001 - every backend raises its own tracer error
        raise RuntimeError(
            f"gradguard.keras.GradGuardCallback reads the gradients on the host, and the gradient of {name!r} has "
            "no values here (a compiled training step); compile the model with jit_compile=False (or run_eagerly=True)"
        ) from None


def _on_torch_device(gradients) -> bool:
    """Whether the gradients are torch tensors that gradguard.torch's device path takes
    (on an accelerator, or every tensor under gradguard.torch.device_path())."""
    if not all(type(g).__module__.partition(".")[0] == "torch" for g in gradients):
        return False
    from .torch.device import on_device_path

    return on_device_path(gradients)


class GradGuardCallback(keras.callbacks.Callback):
    """Feeds a GradientMonitor (layers named by variable path, e.g.
    "dense/kernel") with the gradients the optimiser applies, optionally
    scales them by gg.clip_coefficient(max_norm, norm) = min(1, max_norm /
    (norm + CLIP_EPS)) (gg.clip_by_global_norm's rule, torch's
    clip_grad_norm_'s, and Keras's global_clipnorm's up to its eps), and adds
    to the epoch's logs (History keeps them: the epoch's last step):

        gradguard_global_norm, gradguard_global_norm_after_clip,
        gradguard_clip_rate, gradguard_findings, gradguard_flagged_layers

    What the optimiser applies: the callback wraps the optimiser's own clip
    (`_clip_gradients`, of the inner optimiser under a LossScaleOptimizer),
    which Keras calls on the gradients of an update step only: averaged over
    the micro-batches with gradient_accumulation_steps (one record per
    update, not per micro-batch), unscaled under mixed_float16, and never for
    a step the LossScaleOptimizer skips because its scaled gradients
    overflowed (routine, left out). The monitor records them before any
    clip; Keras's own clip (clipnorm, global_clipnorm, clipvalue) runs first,
    then max_norm's, and the norm after both is recorded.

    Gradients that are None (variables the loss does not reach) are left out
    of the step. Gradients on an accelerator are reduced there (gradguard.torch's
    device path: one small transfer a step). New findings are kept in
    monitor.findings (monitor.report() prints them).
    """

    def __init__(self, monitor=None, *, max_norm=None):
        super().__init__()
        self.monitor = monitor
        self.max_norm = None if max_norm is None else float(max_norm)
        if self.max_norm is not None and not self.max_norm >= 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
        self.last_norm = None
        self._wrapped = []
        self._variables = None

    def on_train_begin(self, logs=None):
        if keras.backend.backend() != "torch":
            raise RuntimeError(
                f"gradguard.keras.GradGuardCallback runs on Keras's torch backend; this is {keras.backend.backend()!r} "
                "(set KERAS_BACKEND=torch before importing keras)"
            )
        optimizer = self.model.optimizer
        applying = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's applies the unscaled step
        names = [variable.path for variable in self.model.trainable_variables]
        if self.monitor is None:
            self.monitor = GradientMonitor(names=names)
        apply_gradients, clip_gradients = applying._backend_apply_gradients, applying._clip_gradients

        def backend_apply_gradients(grads, trainable_variables):
            self._variables = list(trainable_variables)  # _clip_gradients gets the gradients alone
            return apply_gradients(grads, trainable_variables)

        def guarded_clip(grads):
            return self._guarded(list(grads), clip_gradients)

        self._wrap(applying, "_backend_apply_gradients", backend_apply_gradients)
        self._wrap(applying, "_clip_gradients", guarded_clip)

    def _wrap(self, owner, attribute, wrapper):
        shadowed = attribute in vars(owner)  # an instance attribute already there (another wrapper)
        self._wrapped.append((owner, attribute, getattr(owner, attribute), shadowed))
        setattr(owner, attribute, wrapper)

    def on_train_end(self, logs=None):
        while self._wrapped:
            owner, attribute, original, shadowed = self._wrapped.pop()
            if shadowed:
                setattr(owner, attribute, original)
            else:
                delattr(owner, attribute)  # the class's method shows through again

    def _guarded(self, grads, keras_clip):
        variables = self._variables if self._variables is not None else self.model.trainable_variables
        present = [(v.path, g) for v, g in zip(variables, grads) if g is not None]
        if not present:
            return keras_clip(grads)
        norm_of, stats = self._reader([g for _, g in present], [name for name, _ in present])
        norm = stats.global_norm
        self.last_norm = norm
        clipped = keras_clip(grads)
        after = norm if all(a is b for a, b in zip(clipped, grads)) else norm_of([g for g in clipped if g is not None])
        if self.max_norm is not None and math.isfinite(after):
            coefficient = clip_coefficient(self.max_norm, after)
            if coefficient != 1.0:
                clipped = [
                    None if g is None else keras.ops.multiply(g, keras.ops.cast(coefficient, g.dtype)) for g in clipped
                ]
                after *= coefficient
        self.monitor.update_stats(stats, allow_missing=True, norm_after_clip=after)
        return clipped

    def _reader(self, tensors, names):
        """(a global-norm function, the step's GradStats) for these gradients: on
        their torch device (one small transfer), else by gradguard's core on the host."""
        if _on_torch_device(tensors):
            from .torch.device import device_grad_stats, device_total_norm, needs_zero_counts

            self.monitor.check_layers(names, allow_missing=True)
            return device_total_norm, device_grad_stats(
                tensors, names, full=False, count_zeros=needs_zero_counts(self.monitor)
            )
        self.monitor.check_layers(names, allow_missing=True)
        arrays = {name: _to_numpy(name, g) for name, g in zip(names, tensors)}

        def norm_of(gradients):
            return global_norm([_to_numpy("clipped", g) for g in gradients])

        return norm_of, grad_stats(arrays)

    def _add_to(self, logs):
        if logs is None or self.last_norm is None:
            return
        flat = self.monitor.latest()
        logs["gradguard_global_norm"] = flat.get("gradguard/grad_norm_before_clip", self.last_norm)
        if "gradguard/grad_norm_after_clip" in flat:
            logs["gradguard_global_norm_after_clip"] = flat["gradguard/grad_norm_after_clip"]
            logs["gradguard_clip_rate"] = flat["gradguard/clip_rate"]
        logs["gradguard_findings"] = len(self.monitor.findings)
        logs["gradguard_flagged_layers"] = len(self.monitor.summary()["flagged"])

    def on_epoch_end(self, epoch, logs=None):
        # The epoch's logs only: History keeps these (the epoch's last step).
        self._add_to(logs)
