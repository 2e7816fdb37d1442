"""Optimisers whose step folds gradient clipping and loss-scale unscaling into
their own pass (torch.optim's formulas, on NumPy parameters updated in place).

step(grads) with max_grad_norm reads the gradients once for the global norm,
then runs the update with every gradient multiplied by
min(1, max_norm / (norm + 1e-6)) (and by 1/scale with a LossScaler): clipping
costs one read instead of a read and a read+write pass. Both happen in one
C++ call, which validates every array before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, as_array_list, in_order_of, name_of, positive_int, real
from .amp import LossScaler

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "StepReport"]

# torch's clip_grad_norm_ eps, used when clipping inside the step.
_CLIP_EPS = 1e-6


@dataclass(frozen=True)
class StepReport:
    """What one step did.

    grad_norm: the global L2 norm of the (unscaled) gradients before clipping
        (None when neither clipping nor loss scaling asked for it).
    clip_coef: the factor folded into the update.
    skipped: the step found inf/NaN (with a LossScaler) and left every parameter untouched.
    nonfinite: the gradients holding inf/NaN.
    update_norms, param_norms: per parameter, ||p_new - p_old||_2 (the update
        actually applied) and ||p_new||_2, summed in float64 by the step's own
        pass (None when the step was skipped). names: the parameters' names
        (None for a list). GradientMonitor.update(..., step_report=) reads these.
    """

    grad_norm: Optional[float]
    clip_coef: float
    skipped: bool
    nonfinite: tuple
    update_norms: Optional[np.ndarray] = None
    param_norms: Optional[np.ndarray] = None
    names: Optional[tuple] = None  # the parameters' names, when they were given as a dict

    @property
    def update_ratio(self) -> Optional[np.ndarray]:
        """||dw|| / ||w|| per parameter (NaN where the parameter is all zero), or None."""
        if self.update_norms is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.param_norms > 0, self.update_norms / self.param_norms, np.nan)


def _flag(value, argument):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be a bool, got {type(value).__name__}")
    return bool(value)


class _Optimizer:
    """The shared machinery: parameters snapshotted at construction, state
    buffers named as in torch.optim, validated hyperparameters, one C++ call a step."""

    _state_names: tuple = ()
    _kind = None

    def __init__(self, params, hyper, max_grad_norm):
        # A snapshot: appending to or reordering the caller's list later does not change what is optimised.
        self._params, self._names = as_array_list(params, "params")
        _core.check_parameters(self._params, self._names)
        self.max_grad_norm = real(max_grad_norm, "max_grad_norm", low=0.0, allow_none=True)
        self.hyper = self._check_hyper(hyper)
        self.step_count = 0
        self.state = {name: [None] * len(self._params) for name in self._state_names}

    @property
    def params(self) -> list:
        """The parameters this optimiser updates (a new list; the arrays themselves)."""
        return list(self._params)

    # -- hyperparameters -------------------------------------------------------------
    @classmethod
    def _check_hyper(cls, hyper):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Kind, hyperparameters, max_grad_norm, step count and state buffers (copies), enough to resume exactly."""
        return {
            "kind": type(self).__name__,
            "hyper": dict(self.hyper),
            "max_grad_norm": self.max_grad_norm,
            "step": self.step_count,
            "state": {name: [None if b is None else b.copy() for b in buffers] for name, buffers in self.state.items()},
        }

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore a state_dict() of the same kind of optimiser over parameters of the same shapes.

        Everything is validated first (the constructor's rules for the
        hyperparameters; real floating-point buffers of the parameters' shapes;
        the state names this optimiser uses) and nothing changes unless all of it is valid.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict from state_dict(), got {type(state_dict).__name__}")
        missing = [key for key in ("hyper", "max_grad_norm", "step", "state") if key not in state_dict]
        if missing:
            raise KeyError(f"optimizer state_dict is missing {missing}")
        kind = state_dict.get("kind", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"this state_dict is of a {kind} optimizer; this one is {type(self).__name__}")
        given_hyper = state_dict["hyper"]
        if not isinstance(given_hyper, Mapping):
            raise TypeError("state_dict['hyper'] must be a dict")
        if set(given_hyper) != set(self.hyper):
            raise ValueError(
                f"state_dict['hyper'] has keys {sorted(given_hyper)}; {type(self).__name__} takes {sorted(self.hyper)}"
            )
        hyper = self._check_hyper(given_hyper)
        max_grad_norm = real(state_dict["max_grad_norm"], "max_grad_norm", low=0.0, allow_none=True)
        step = positive_int(state_dict["step"], "step", minimum=0)
        state = state_dict["state"]
        if not isinstance(state, Mapping):
            raise TypeError("state_dict['state'] must be a dict of state name -> list of buffers")
        unexpected = [name for name in state if name not in self._state_names]
        if unexpected:
            raise ValueError(
                f"state_dict['state'] has {unexpected}, which {type(self).__name__} does not keep "
                f"(it keeps {list(self._state_names)})"
            )
        active = self._active_states_for(hyper)
        buffers = {}
        for name in self._state_names:
            given = state.get(name, [None] * len(self._params))
            if not isinstance(given, (list, tuple)) or len(given) != len(self._params):
                raise ValueError(f"state {name!r} must be a list of {len(self._params)} buffers (or None)")
            converted = []
            for index, (buffer, param) in enumerate(zip(given, self._params)):
                if buffer is None:
                    if step > 0 and name in active:
                        raise ValueError(
                            f"state {name!r}[{index}] is missing, and this optimiser has taken {step} steps"
                        )
                    converted.append(None)
                    continue
                if not isinstance(buffer, np.ndarray) or buffer.dtype.kind != "f":
                    what = buffer.dtype if isinstance(buffer, np.ndarray) else type(buffer).__name__
                    raise TypeError(f"state {name!r}[{index}] must be a real floating-point NumPy array, got {what}")
                if buffer.shape != param.shape:
                    raise ValueError(
                        f"state {name!r}[{index}] has shape {buffer.shape}, {name_of(index, self._names, 'params')} {param.shape}"
                    )
                converted.append(np.array(buffer, dtype=param.dtype, order="C", copy=True))
            buffers[name] = converted
        self.hyper, self.max_grad_norm, self.step_count, self.state = hyper, max_grad_norm, step, buffers

    # -- the step ------------------------------------------------------------------------------
    def step(
        self,
        grads: Arrays,
        loss_scaler: Optional[LossScaler] = None,
        return_report: bool = False,
        *,
        skip_nonfinite: bool = False,
        grad_norm: Optional[float] = None,
    ) -> Union[Optional[float], StepReport]:
        """Apply one update.

        grads: a list matching params by position, or a dict; when the
        parameters were given as a dict too, gradients are matched by name
        (different key sets raise a ValueError naming the missing and
        unexpected ones). float32 params take float32, float16 or bfloat16
        gradients. With max_grad_norm the gradients are clipped by their global
        L2 norm inside the update; with a LossScaler they are unscaled there
        too, and a step that finds inf/NaN is skipped (parameters and state
        untouched) and the scaler backs off. Every array is validated before
        anything is written: a refused step changes nothing.

        skip_nonfinite: skip the step (nothing changes) when the gradients hold
        inf/NaN, as with a LossScaler, without one. grad_norm: the gradients'
        global L2 norm (unscaled by any loss scale) when the caller has just
        computed it: the step then does not read the gradients a second time.

        Returns the pre-clip gradient norm (None without clipping or scaling),
        or a StepReport with return_report, which also carries each parameter's
        update norm ||p_new - p_old|| and new norm ||p_new|| from the same pass.
        """
        grad_list, names = as_array_list(grads, "grads")
        grad_list = in_order_of(self._names, grad_list, names)
        hyper = self._check_hyper(self.hyper)
        inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
        want_norm = self.max_grad_norm is not None or loss_scaler is not None or skip_nonfinite
        known = math.nan if grad_norm is None else real(grad_norm, "grad_norm", low=0.0) / inverse_scale
        active = self._active_states_for(hyper)
        # New buffers are committed to self.state only once the step has been accepted.
        states = [self._buffers_for(name) if name in active else None for name in self._state_names]
        states += [None] * (3 - len(states))
        settings = self._settings(hyper, self.step_count + 1)
        max_norm = math.nan if self.max_grad_norm is None else self.max_grad_norm
        norm, coefficient, skipped, nonfinite_indices, update_norms, param_norms = _core.optimizer_step(
            self._params,
            grad_list,
            states,
            list(self._state_names) + [""] * (3 - len(self._state_names)),
            settings,
            max_norm,
            _CLIP_EPS,
            inverse_scale,
            want_norm,
            loss_scaler is not None or bool(skip_nonfinite),
            bool(return_report),
            known,
            self._names,
        )
        nonfinite = tuple(self._names[i] for i in nonfinite_indices) if self._names else tuple(nonfinite_indices)
        if skipped:
            if loss_scaler is not None:
                loss_scaler.update(True)
        else:
            for name, buffers in zip(self._state_names, states):
                if buffers is not None:
                    self.state[name] = buffers
            self.step_count += 1
            if loss_scaler is not None:
                loss_scaler.update(False)
        report = StepReport(
            norm,
            coefficient,
            skipped,
            nonfinite,
            update_norms,
            param_norms,
            tuple(self._names) if self._names is not None else None,
        )
        return report if return_report else norm

    def _buffers_for(self, name):
        return [
            np.zeros(param.shape, dtype=param.dtype) if buffer is None else buffer
            for buffer, param in zip(self.state[name], self._params)
        ]


class SGD(_Optimizer):
    """torch.optim.SGD: g += wd * p; buf = g (first step) or momentum * buf + (1 - dampening) * g;
    g = g + momentum * buf (nesterov) or buf; p -= lr * g. State: momentum_buffer."""

    _state_names = ("momentum_buffer",)

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, max_grad_norm=None):
        hyper = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(params, hyper, max_grad_norm)

    @classmethod
    def _check_hyper(cls, hyper):
        checked = {
            "lr": real(hyper["lr"], "lr", low=0.0, allow_inf=False),
            "momentum": real(hyper["momentum"], "momentum", low=0.0, allow_inf=False),
            "dampening": real(hyper["dampening"], "dampening", low=0.0, high=1.0),
            "weight_decay": real(hyper["weight_decay"], "weight_decay", low=0.0, allow_inf=False),
            "nesterov": _flag(hyper["nesterov"], "nesterov"),
        }
        if checked["nesterov"] and (checked["momentum"] <= 0 or checked["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        return checked

    @staticmethod
    def _active_states_for(hyper):
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _settings(self, hyper, step):
        settings = _core.OptimizerStep()
        settings.kind = _core.OptimizerKind.sgd
        settings.lr, settings.momentum, settings.dampening = hyper["lr"], hyper["momentum"], hyper["dampening"]
        settings.weight_decay, settings.nesterov = hyper["weight_decay"], hyper["nesterov"]
        settings.first_step = step == 1
        return settings


class Adam(_Optimizer):
    """torch.optim.Adam: g += wd * p (AdamW instead: p *= 1 - lr * wd);
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (amsgrad: v_max = max(v_max, v));
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    State: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad)."""

    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, max_grad_norm=None
    ):
        hyper = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad}
        super().__init__(params, hyper, max_grad_norm)

    @classmethod
    def _check_hyper(cls, hyper):
        betas = hyper["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        return {
            "lr": real(hyper["lr"], "lr", low=0.0, allow_inf=False),
            "betas": (
                real(betas[0], "betas[0]", low=0.0, high=1.0, high_open=True),
                real(betas[1], "betas[1]", low=0.0, high=1.0, high_open=True),
            ),
            "eps": real(hyper["eps"], "eps", low=0.0, allow_inf=False),
            "weight_decay": real(hyper["weight_decay"], "weight_decay", low=0.0, allow_inf=False),
            "amsgrad": _flag(hyper["amsgrad"], "amsgrad"),
        }

    @staticmethod
    def _active_states_for(hyper):
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hyper["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _settings(self, hyper, step):
        beta1, beta2 = hyper["betas"]
        settings = _core.OptimizerStep()
        settings.kind = _core.OptimizerKind.adam
        settings.lr, settings.beta1, settings.beta2, settings.eps = hyper["lr"], beta1, beta2, hyper["eps"]
        settings.weight_decay, settings.amsgrad = hyper["weight_decay"], hyper["amsgrad"]
        settings.decoupled_weight_decay = self._decoupled
        settings.step_size = hyper["lr"] / (1.0 - beta1**step)
        settings.bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
        return settings


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    _decoupled = True

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, max_grad_norm=None
    ):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, max_grad_norm)


class RMSprop(_Optimizer):
    """torch.optim.RMSprop: g += wd * p; s = a s + (1 - a) g^2; avg = sqrt(s) + eps
    (centered: sqrt(s - ga^2) + eps with ga = a ga + (1 - a) g); buf = m buf + g / avg and
    p -= lr * buf (momentum > 0), else p -= lr * g / avg.
    State: square_avg, momentum_buffer (momentum > 0), grad_avg (centered)."""

    _state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def __init__(
        self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, max_grad_norm=None
    ):
        hyper = {
            "lr": lr,
            "alpha": alpha,
            "eps": eps,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "centered": centered,
        }
        super().__init__(params, hyper, max_grad_norm)

    @classmethod
    def _check_hyper(cls, hyper):
        return {
            "lr": real(hyper["lr"], "lr", low=0.0, allow_inf=False),
            "alpha": real(hyper["alpha"], "alpha", low=0.0, high=1.0),
            "eps": real(hyper["eps"], "eps", low=0.0, allow_inf=False),
            "weight_decay": real(hyper["weight_decay"], "weight_decay", low=0.0, allow_inf=False),
            "momentum": real(hyper["momentum"], "momentum", low=0.0, allow_inf=False),
            "centered": _flag(hyper["centered"], "centered"),
        }

    @staticmethod
    def _active_states_for(hyper):
        active = ["square_avg"]
        if hyper["momentum"] > 0:
            active.append("momentum_buffer")
        if hyper["centered"]:
            active.append("grad_avg")
        return tuple(active)

    def _settings(self, hyper, step):
        settings = _core.OptimizerStep()
        settings.kind = _core.OptimizerKind.rmsprop
        settings.lr, settings.alpha, settings.eps = hyper["lr"], hyper["alpha"], hyper["eps"]
        settings.weight_decay, settings.momentum, settings.centered = (
            hyper["weight_decay"],
            hyper["momentum"],
            hyper["centered"],
        )
        return settings
