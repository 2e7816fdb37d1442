"""Optimisers whose step folds gradient clipping and loss-scale unscaling into
their own pass (torch.optim's formulas, on NumPy parameters updated in place).

step(grads) with max_grad_norm reads the gradients once for the global norm,
then runs the update with every gradient multiplied by
min(1, max_norm / (norm + 1e-6)) (and by 1/scale with a LossScaler): clipping
costs one read instead of a read and a read+write pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _core
from ._arguments import as_array_list
from .amp import LossScaler

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "StepReport"]

_KIND = {"sgd": 0, "adam": 1, "rmsprop": 2}


@dataclass(frozen=True)
class StepReport:
    """What one step did. grad_norm: the global L2 norm of the (unscaled) gradients
    before clipping (None when neither clipping nor loss scaling asked for it);
    clip_coef: the factor folded into the update; skipped: the step found inf/NaN
    (with a LossScaler) and left every parameter untouched; nonfinite: the
    gradients holding inf/NaN."""

    grad_norm: Optional[float]
    clip_coef: float
    skipped: bool
    nonfinite: tuple


def _number(value, argument, low=None, high=None, low_open=False, high_open=False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a real number, got {type(value).__name__}") from None
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if math.isnan(number) or math.isinf(number) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{argument} must be a finite number in {interval}, got {value!r}")
    return number


class _Optimizer:
    _state_names: tuple = ()

    def __init__(self, params, hyper, max_grad_norm):
        self._params, self._names = as_array_list(params, "params")
        for index, param in enumerate(self._params):
            if not isinstance(param, np.ndarray) or param.dtype not in (np.float32, np.float64):
                raise TypeError(f"params[{index}] must be a float32 or float64 NumPy array")
            if not param.flags.writeable:
                raise ValueError(f"params[{index}] is read-only")
            if not param.flags.c_contiguous:
                # State buffers and gradients must pair element by element in memory order.
                raise ValueError(f"params[{index}] is not C-contiguous")
        self.max_grad_norm = None if max_grad_norm is None else _number(max_grad_norm, "max_grad_norm", 0.0)
        self.hyper = hyper
        self.step_count = 0
        self.state = {name: [None] * len(self._params) for name in self._state_names}

    # -- state ---------------------------------------------------------------------------
    def _buffers(self, name):
        buffers = self.state[name]
        for index, param in enumerate(self._params):
            if buffers[index] is None:
                buffers[index] = np.zeros(param.shape, dtype=param.dtype)
        return buffers

    def state_dict(self):
        """Hyper-parameters, step count and state buffers (copies), enough to resume exactly."""
        return {"hyper": dict(self.hyper), "max_grad_norm": self.max_grad_norm, "step": self.step_count,
                "state": {name: [None if b is None else b.copy() for b in buffers] for name, buffers in self.state.items()}}

    def load_state_dict(self, state_dict):
        state = state_dict["state"]
        for name in self._state_names:
            buffers = state.get(name, [None] * len(self._params))
            if len(buffers) != len(self._params):
                raise ValueError(f"state {name!r} has {len(buffers)} buffers for {len(self._params)} parameters")
            for index, buffer in enumerate(buffers):
                if buffer is not None and buffer.shape != self._params[index].shape:
                    raise ValueError(f"state {name!r}[{index}] has shape {buffer.shape}, "
                                     f"params[{index}] {self._params[index].shape}")
        self.hyper = dict(state_dict["hyper"])
        self.max_grad_norm = state_dict["max_grad_norm"]
        self.step_count = int(state_dict["step"])
        self.state = {name: [None if b is None else np.array(b, dtype=self._params[i].dtype)
                             for i, b in enumerate(state.get(name, [None] * len(self._params)))]
                      for name in self._state_names}

    # -- the step ------------------------------------------------------------------------------
    def _grads(self, grads):
        grad_list, _ = as_array_list(grads, "grads")
        if len(grad_list) != len(self._params):
            raise ValueError(f"step got {len(grad_list)} gradients for {len(self._params)} parameters")
        for index, (grad, param) in enumerate(zip(grad_list, self._params)):
            if isinstance(grad, np.ndarray):
                if grad.shape != param.shape:
                    raise ValueError(f"grads[{index}] has shape {grad.shape}, params[{index}] {param.shape}")
                if not grad.flags.c_contiguous:
                    raise ValueError(f"grads[{index}] is not C-contiguous")
        return grad_list

    def step(self, grads, loss_scaler: Optional[LossScaler] = None, return_report=False):
        """Apply one update. grads: a list/dict matching params (float32 params take
        float32, float16 or bfloat16 gradients). With max_grad_norm the gradients are
        clipped by their global L2 norm inside the update; with a LossScaler they are
        unscaled there too, and a step that finds inf/NaN is skipped (parameters and
        state untouched) and the scaler backs off. Returns the pre-clip gradient norm
        (None without clipping or scaling), or a StepReport with return_report."""
        grad_list = self._grads(grads)
        inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
        norm, coefficient, nonfinite = None, 1.0, ()
        if self.max_grad_norm is not None or loss_scaler is not None:
            raw_norm, nonfinite_indices = _core.global_norm(grad_list, 2.0, self._names)
            nonfinite = tuple(self._names[i] for i in nonfinite_indices) if self._names else tuple(nonfinite_indices)
            norm = raw_norm * inverse_scale
            if loss_scaler is not None and not math.isfinite(raw_norm):
                loss_scaler.update(True)
                report = StepReport(norm, 0.0, True, nonfinite)
                return report if return_report else norm
            if self.max_grad_norm is not None:
                coefficient = min(1.0, self.max_grad_norm / (norm + 1e-6)) if math.isfinite(norm) else math.nan
        first_step = self.step_count == 0
        hyper = self._step_hyper(self.step_count + 1, first_step)
        hyper["grad_scale"] = coefficient * inverse_scale
        states = [self._buffers(name) if name in self._active_states() else None for name in ("state0", "state1", "state2")]
        _core.optimizer_step(self._params, grad_list, states, hyper, self._names)
        self.step_count += 1
        if loss_scaler is not None:
            loss_scaler.update(False)
        report = StepReport(norm, coefficient, False, nonfinite)
        return report if return_report else norm

    def _base_hyper(self):
        return {"kind": 0, "lr": 0.0, "weight_decay": 0.0, "decoupled_weight_decay": False, "momentum": 0.0,
                "dampening": 0.0, "nesterov": False, "first_step": False, "beta1": 0.0, "beta2": 0.0, "eps": 0.0,
                "amsgrad": False, "step_size": 0.0, "bias_correction2_sqrt": 1.0, "alpha": 0.0, "centered": False}


class SGD(_Optimizer):
    """torch.optim.SGD: g += wd * p; buf = g (first step) or momentum * buf + (1 - dampening) * g;
    g = g + momentum * buf (nesterov) or buf; p -= lr * g."""

    _state_names = ("state0",)  # momentum_buffer

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, max_grad_norm=None):
        hyper = {"lr": _number(lr, "lr", 0.0), "momentum": _number(momentum, "momentum", 0.0),
                 "dampening": _number(dampening, "dampening", 0.0, 1.0),
                 "weight_decay": _number(weight_decay, "weight_decay", 0.0), "nesterov": bool(nesterov)}
        if nesterov and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, hyper, max_grad_norm)

    def _active_states(self):
        return ("state0",) if self.hyper["momentum"] != 0 else ()

    def _step_hyper(self, step, first_step):
        hyper = self._base_hyper()
        hyper.update(self.hyper, kind=_KIND["sgd"], first_step=first_step)
        return hyper


class Adam(_Optimizer):
    """torch.optim.Adam: g += wd * p (AdamW instead: p *= 1 - lr * wd);
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (amsgrad: v_max = max(v_max, v));
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    _state_names = ("state0", "state1", "state2")  # exp_avg, exp_avg_sq, max_exp_avg_sq
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 max_grad_norm=None):
        beta1, beta2 = betas
        hyper = {"lr": _number(lr, "lr", 0.0), "beta1": _number(beta1, "betas[0]", 0.0, 1.0, high_open=True),
                 "beta2": _number(beta2, "betas[1]", 0.0, 1.0, high_open=True), "eps": _number(eps, "eps", 0.0),
                 "weight_decay": _number(weight_decay, "weight_decay", 0.0), "amsgrad": bool(amsgrad),
                 "decoupled_weight_decay": self._decoupled}
        super().__init__(params, hyper, max_grad_norm)

    def _active_states(self):
        return ("state0", "state1", "state2") if self.hyper["amsgrad"] else ("state0", "state1")

    def _step_hyper(self, step, first_step):
        hyper = self._base_hyper()
        hyper.update(self.hyper, kind=_KIND["adam"])
        hyper["step_size"] = self.hyper["lr"] / (1.0 - self.hyper["beta1"] ** step)
        hyper["bias_correction2_sqrt"] = math.sqrt(1.0 - self.hyper["beta2"] ** step)
        return hyper


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 max_grad_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, max_grad_norm)


class RMSprop(_Optimizer):
    """torch.optim.RMSprop: g += wd * p; s = a s + (1 - a) g^2; avg = sqrt(s) + eps
    (centered: sqrt(s - ga^2) + eps with ga = a ga + (1 - a) g); buf = m buf + g / avg and
    p -= lr * buf (momentum > 0), else p -= lr * g / avg."""

    _state_names = ("state0", "state1", "state2")  # square_avg, momentum_buffer, grad_avg

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 max_grad_norm=None):
        hyper = {"lr": _number(lr, "lr", 0.0), "alpha": _number(alpha, "alpha", 0.0, 1.0),
                 "eps": _number(eps, "eps", 0.0), "weight_decay": _number(weight_decay, "weight_decay", 0.0),
                 "momentum": _number(momentum, "momentum", 0.0), "centered": bool(centered)}
        super().__init__(params, hyper, max_grad_norm)

    def _active_states(self):
        active = ["state0"]
        if self.hyper["momentum"] > 0:
            active.append("state1")
        if self.hyper["centered"]:
            active.append("state2")
        return tuple(active)

    def _step_hyper(self, step, first_step):
        hyper = self._base_hyper()
        hyper.update(self.hyper, kind=_KIND["rmsprop"])
        return hyper
