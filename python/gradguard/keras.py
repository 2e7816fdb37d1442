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
    "dense/kernel") with every step's gradients, optionally scales them by
    gg.clip_coefficient(max_norm, norm) = min(1, max_norm / (norm + CLIP_EPS))
    (gg.clip_by_global_norm's rule, torch's clip_grad_norm_'s) before
    the optimiser applies them, and adds to the batch logs:

        gradguard_global_norm, gradguard_findings, gradguard_flagged_layers

    Gradients that are None (variables the loss does not reach) are left out of
    the step. Gradients on an accelerator are reduced there (gradguard.torch's
    device path: one small transfer a step, the scaling left to Keras). New findings are kept in monitor.findings (monitor.report() prints them).
    """

    def __init__(self, monitor=None, *, max_norm=None):
        super().__init__()
        self.monitor = monitor
        self.max_norm = None if max_norm is None else float(max_norm)
        if self.max_norm is not None and not self.max_norm >= 0:
            raise ValueError(f"max_norm must be >= 0, got {max_norm!r}")
        self.last_norm = None
        self._wrapped = None

    def on_train_begin(self, logs=None):
        if keras.backend.backend() != "torch":
            raise RuntimeError(
                f"gradguard.keras.GradGuardCallback runs on Keras's torch backend; this is {keras.backend.backend()!r} "
                "(set KERAS_BACKEND=torch before importing keras)"
            )
        optimizer = self.model.optimizer
        names = [variable.path for variable in self.model.trainable_variables]
        if self.monitor is None:
            self.monitor = GradientMonitor(names=names)
        original = optimizer.apply

        def apply(grads, trainable_variables=None):
            variables = self.model.trainable_variables if trainable_variables is None else trainable_variables
            return original(self._guarded(list(grads), list(variables)), trainable_variables)

        shadowed = "apply" in vars(optimizer)  # an instance attribute already there (another wrapper)
        optimizer.apply = apply
        self._wrapped = (optimizer, original, shadowed)

    def on_train_end(self, logs=None):
        if self._wrapped is not None:
            optimizer, original, shadowed = self._wrapped
            if shadowed:
                optimizer.apply = original
            else:
                del optimizer.apply  # the class's method shows through again
            self._wrapped = None

    def _guarded(self, grads, variables):
        present = [(v.path, g) for v, g in zip(variables, grads) if g is not None]
        if not present:
            return grads
        tensors = [g for _, g in present]
        if _on_torch_device(tensors):  # reduced on their device: one small transfer, not the gradients
            from .torch.device import device_grad_stats, needs_zero_counts

            names = [name for name, _ in present]
            self.monitor.check_layers(names, allow_missing=True)
            stats = device_grad_stats(tensors, names, full=False, count_zeros=needs_zero_counts(self.monitor))
            norm = stats.global_norm
            self.monitor.update_stats(stats, allow_missing=True)
        else:
            arrays = {name: _to_numpy(name, g) for name, g in present}
            norm = global_norm(arrays)
            self.monitor.update(arrays, allow_missing=True)
        self.last_norm = norm
        if self.max_norm is None or not math.isfinite(norm):
            return grads  # a non-finite step is left for the optimiser's own handling, not scaled into NaN
        coefficient = clip_coefficient(self.max_norm, norm)
        if coefficient == 1.0:
            return grads
        return [None if g is None else keras.ops.multiply(g, keras.ops.cast(coefficient, g.dtype)) for g in grads]

    def _add_to(self, logs):
        if logs is None or self.last_norm is None:
            return
        logs["gradguard_global_norm"] = self.last_norm
        logs["gradguard_findings"] = len(self.monitor.findings)
        logs["gradguard_flagged_layers"] = len(self.monitor.summary()["flagged"])

    def on_epoch_end(self, epoch, logs=None):
        # Only the epoch's logs: Keras (jax backend) rereads its metrics when a
        # batch's logs gain keys. History keeps these: the epoch's last step.
        self._add_to(logs)
