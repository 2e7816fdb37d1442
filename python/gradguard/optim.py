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
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, as_array_list, in_order_of, name_of, positive_int, real
from .amp import LossScaler

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "StepReport", "LambdaLR"]

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


def _is_group_list(params):
    return isinstance(params, (list, tuple)) and len(params) > 0 and all(isinstance(g, Mapping) for g in params)


class _FirstGroup(MutableMapping):
    """opt.hyper: the first parameter group's hyperparameters, live (kept for code
    written before parameter groups; new code reads opt.param_groups)."""

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def _group(self):
        return self._optimizer.param_groups[0]

    def __getitem__(self, key):
        if key not in self._optimizer.defaults:
            raise KeyError(key)
        return self._group()[key]

    def __setitem__(self, key, value):
        if key not in self._optimizer.defaults:
            raise KeyError(f"{key!r} is not a hyperparameter of {type(self._optimizer).__name__}")
        self._group()[key] = value

    def __delitem__(self, key):
        raise TypeError("hyperparameters cannot be deleted")

    def __iter__(self):
        return iter(self._optimizer.defaults)

    def __len__(self):
        return len(self._optimizer.defaults)


class _Optimizer:
    """The shared machinery: parameters snapshotted at construction (in
    parameter groups), state buffers named as in torch.optim, validated
    hyperparameters, one C++ call a step."""

    _state_names: tuple = ()
    _kind = None

    def __init__(self, params, hyper, max_grad_norm):
        self.defaults = self._check_hyper(hyper)
        # A snapshot: appending to or reordering the caller's containers later does not change what is optimised.
        self.param_groups = []
        self._params, names, named = [], [], set()
        for index, (arrays, group_names, overrides) in enumerate(self._groups_of(params)):
            unknown = sorted(set(overrides) - set(self.defaults))
            if unknown:
                raise ValueError(
                    f"param_groups[{index}] sets {unknown}, which {type(self).__name__} does not take "
                    f"(it takes {sorted(self.defaults)})"
                )
            group_hyper = self._check_hyper({**self.defaults, **overrides})
            self.param_groups.append({"params": list(arrays), "names": group_names, **group_hyper})
            self._params += arrays
            named.add(group_names is not None)
            names += group_names or []
        if len(named) > 1:
            raise ValueError("parameter groups must all be named (dicts of arrays) or all be lists")
        self._names = names if True in named else None
        if self._names is not None and len(set(self._names)) != len(self._names):
            raise ValueError("parameter names must be unique across the parameter groups")
        _core.check_parameters(self._params, self._names)
        self._group_of = np.repeat(
            np.arange(len(self.param_groups)), [len(group["params"]) for group in self.param_groups]
        )
        self.max_grad_norm = real(max_grad_norm, "max_grad_norm", low=0.0, allow_none=True)
        self.step_count = 0
        self._param_steps = np.zeros(len(self._params), dtype=np.int64)  # steps each parameter has taken
        self._steps_differ = False  # whether a None gradient has left some parameters behind
        self.state = {name: [None] * len(self._params) for name in self._state_names}

    @staticmethod
    def _groups_of(params):
        """[(arrays, names or None, hyperparameter overrides)] from params: a list
        or dict of arrays (one group), or a torch-style list of dicts, each with
        "params" (a list or dict of arrays) and any hyperparameters to override."""
        if not _is_group_list(params):
            arrays, names = as_array_list(params, "params")
            return [(arrays, names, {})]
        groups = []
        for index, group in enumerate(params):
            if "params" not in group:
                raise ValueError(f"param_groups[{index}] has no 'params'")
            arrays, names = as_array_list(group["params"], f"param_groups[{index}]['params']")
            groups.append((arrays, names, {key: value for key, value in group.items() if key != "params"}))
        return groups

    @property
    def params(self) -> list:
        """The parameters this optimiser updates, all groups in order (a new list; the arrays themselves)."""
        return list(self._params)

    @property
    def hyper(self):
        """The first parameter group's hyperparameters (a live mapping)."""
        return _FirstGroup(self)

    @property
    def lr(self) -> float:
        """The first group's learning rate. Setting it sets every group's; to set
        one group's, write opt.param_groups[i]["lr"]. A schedule: see LambdaLR."""
        return float(self.param_groups[0]["lr"])

    @lr.setter
    def lr(self, value):
        value = real(value, "lr", low=0.0, allow_inf=False)
        for group in self.param_groups:
            group["lr"] = value

    # -- hyperparameters -------------------------------------------------------------
    @classmethod
    def _check_hyper(cls, hyper):  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _checked_groups(self):
        """Every group's hyperparameters, validated (they may have been edited since the last step)."""
        checked = []
        for index, group in enumerate(self.param_groups):
            try:
                checked.append(self._check_hyper(group))
            except (TypeError, ValueError) as error:
                raise type(error)(f"param_groups[{index}]: {error}") from None
        return checked

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Kind, hyperparameters (of every group), max_grad_norm, step counts and
        state buffers (copies), enough to resume exactly."""
        groups = [{key: group[key] for key in self.defaults} for group in self.param_groups]
        saved = {
            "kind": type(self).__name__,
            "hyper": dict(groups[0]),
            "max_grad_norm": self.max_grad_norm,
            "step": self.step_count,
            "param_steps": [int(step) for step in self._param_steps],
            "state": {name: [None if b is None else b.copy() for b in buffers] for name, buffers in self.state.items()},
        }
        if len(groups) > 1:
            saved["param_groups"] = groups  # "hyper" stays the first group's
        return saved

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore a state_dict() of the same kind of optimiser over parameters of the
        same shapes and the same number of parameter groups.

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
        # "hyper" is the first group's (what state_dicts held before parameter groups).
        given_groups = state_dict.get("param_groups", [state_dict["hyper"]])
        if not isinstance(given_groups, (list, tuple)) or len(given_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(given_groups) if isinstance(given_groups, (list, tuple)) else 'no list of'} "
                f"parameter groups; this optimizer has {len(self.param_groups)}"
            )
        hypers = []
        for given_hyper in given_groups:
            if not isinstance(given_hyper, Mapping):
                raise TypeError("state_dict['hyper'] must be a dict")
            if set(given_hyper) != set(self.defaults):
                raise ValueError(
                    f"state_dict['hyper'] has keys {sorted(given_hyper)}; {type(self).__name__} takes {sorted(self.defaults)}"
                )
            hypers.append(self._check_hyper(given_hyper))
        if given_groups[0] is not state_dict["hyper"]:
            first = state_dict["hyper"]
            if (
                not isinstance(first, Mapping)
                or set(first) != set(self.defaults)
                or self._check_hyper(first) != hypers[0]
            ):
                raise ValueError("state_dict['hyper'] must be state_dict['param_groups'][0]'s hyperparameters")
        max_grad_norm = real(state_dict["max_grad_norm"], "max_grad_norm", low=0.0, allow_none=True)
        step = positive_int(state_dict["step"], "step", minimum=0)
        param_steps = state_dict.get("param_steps", [step] * len(self._params))
        if not isinstance(param_steps, (list, tuple)) or len(param_steps) != len(self._params):
            raise ValueError(f"state_dict['param_steps'] must hold one step count per parameter ({len(self._params)})")
        param_steps = np.array([positive_int(n, "param_steps", minimum=0) for n in param_steps], dtype=np.int64)
        state = state_dict["state"]
        if not isinstance(state, Mapping):
            raise TypeError("state_dict['state'] must be a dict of state name -> list of buffers")
        unexpected = [name for name in state if name not in self._state_names]
        if unexpected:
            raise ValueError(
                f"state_dict['state'] has {unexpected}, which {type(self).__name__} does not keep "
                f"(it keeps {list(self._state_names)})"
            )
        active = {name for hyper in hypers for name in self._active_states_for(hyper)}
        buffers = {}
        for name in self._state_names:
            given = state.get(name, [None] * len(self._params))
            if not isinstance(given, (list, tuple)) or len(given) != len(self._params):
                raise ValueError(f"state {name!r} must be a list of {len(self._params)} buffers (or None)")
            converted = []
            for index, (buffer, param) in enumerate(zip(given, self._params)):
                if buffer is None:
                    if param_steps[index] > 0 and name in active:
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
        for group, hyper in zip(self.param_groups, hypers):
            group.update(hyper)
        self.max_grad_norm, self.step_count, self.state = max_grad_norm, step, buffers
        self._param_steps = param_steps
        self._steps_differ = bool(len(param_steps)) and bool((param_steps != step).any())

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

        grads: a list matching the parameters by position (all groups in
        order), or a dict; when the parameters were given as dicts too,
        gradients are matched by name (different key sets raise a ValueError
        naming the missing and unexpected ones). A gradient that is None skips
        its parameter this step, as torch skips a parameter whose .grad is None:
        neither it nor its state changes, and its own step count (Adam's bias
        correction) does not advance. float32 params take float32, float16 or
        bfloat16 gradients. With max_grad_norm the gradients are clipped by
        their global L2 norm (over every group) inside the update; with a
        LossScaler they are unscaled there too, and a step that finds inf/NaN
        is skipped (parameters and state untouched) and the scaler backs off.
        Each group runs with its own hyperparameters, read from
        opt.param_groups at this step. Every array is validated before
        anything is written: a refused step changes nothing.

        skip_nonfinite: skip the step (nothing changes) when the gradients hold
        inf/NaN, as with a LossScaler, without one. grad_norm: the gradients'
        global L2 norm (unscaled by any loss scale) when the caller has just
        computed it: the step then does not read the gradients a second time.

        Returns the pre-clip gradient norm (None without clipping or scaling),
        or a StepReport with return_report, which also carries each parameter's
        update norm ||p_new - p_old|| and new norm ||p_new|| from the same pass
        (NaN for a parameter skipped for a None gradient).
        """
        grad_list, names = as_array_list(grads, "grads")
        grad_list = in_order_of(self._names, grad_list, names)
        count = len(self._params)
        if len(grad_list) != count:
            raise ValueError(f"grads has {len(grad_list)} arrays for {count} params")
        hypers = self._checked_groups()
        # chosen: the parameters stepping (None: all of them, the common case, kept cheap).
        chosen = None
        if any(grad is None for grad in grad_list):
            chosen = [index for index, grad in enumerate(grad_list) if grad is not None]
        stepping = range(count) if chosen is None else chosen
        inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
        want_norm = self.max_grad_norm is not None or loss_scaler is not None or skip_nonfinite
        known = math.nan if grad_norm is None else real(grad_norm, "grad_norm", low=0.0) / inverse_scale
        settings, settings_of = self._step_settings(hypers, chosen)
        groups_stepping = range(len(hypers)) if chosen is None else set(self._group_of[chosen].tolist())
        active = {name for group in groups_stepping for name in self._active_states_for(hypers[group])}
        # New buffers are committed to self.state only once the step has been accepted.
        buffers = {name: self._buffers_for(name, chosen) for name in self._state_names if name in active}
        states = [buffers.get(name) for name in self._state_names] + [None] * (3 - len(self._state_names))
        step_names = self._names if chosen is None or self._names is None else [self._names[i] for i in chosen]
        max_norm = math.nan if self.max_grad_norm is None else self.max_grad_norm
        norm, coefficient, skipped, nonfinite_indices, update_norms, param_norms = _core.optimizer_step(
            self._params if chosen is None else [self._params[i] for i in chosen],
            grad_list if chosen is None else [grad_list[i] for i in chosen],
            states,
            list(self._state_names) + [""] * (3 - len(self._state_names)),
            settings,
            settings_of,
            max_norm,
            _CLIP_EPS,
            inverse_scale,
            want_norm,
            loss_scaler is not None or bool(skip_nonfinite),
            bool(return_report),
            known,
            step_names,
        )
        nonfinite = tuple((step_names or list(stepping))[i] for i in nonfinite_indices)
        if skipped:
            if loss_scaler is not None:
                loss_scaler.update(True)
        else:
            for name, stepped in buffers.items():
                current = self.state[name]
                for index, buffer in zip(stepping, stepped):
                    if current[index] is None:
                        current[index] = buffer
            if chosen is None:
                self._param_steps += 1
            else:
                self._param_steps[chosen] += 1
                self._steps_differ = self._steps_differ or len(chosen) != count
            self.step_count += 1
            if loss_scaler is not None:
                loss_scaler.update(False)
        if return_report and update_norms is not None and chosen is not None:
            update_norms, param_norms = self._spread(update_norms, chosen), self._spread(param_norms, chosen)
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

    def _step_settings(self, hypers, chosen):
        """(settings, settings_of): one kernel settings per (group, step count) among
        the stepping parameters, and each one's index into them (empty: all use the
        first). A parameter that skipped steps keeps its own bias correction, as in torch."""
        if not self._steps_differ:
            step = self.step_count + 1
            if len(hypers) == 1:
                return [self._settings(hypers[0], step)], []
            groups = self._group_of if chosen is None else self._group_of[chosen]
            return [self._settings(hyper, step) for hyper in hypers], groups.tolist()
        groups = self._group_of if chosen is None else self._group_of[chosen]
        steps = (self._param_steps if chosen is None else self._param_steps[chosen]) + 1
        keys = np.stack([groups, steps], axis=1)
        if not len(keys):
            return [self._settings(hypers[0], self.step_count + 1)], []
        distinct, settings_of = np.unique(keys, axis=0, return_inverse=True)
        settings = [self._settings(hypers[int(group)], int(step)) for group, step in distinct]
        return settings, settings_of.reshape(-1).tolist()

    def _spread(self, values, chosen):
        full = np.full(len(self._params), np.nan)
        full[chosen] = values
        return full

    def _buffers_for(self, name, chosen):
        """The state buffers of the stepping parameters (new zero buffers where none yet)."""
        current = self.state[name]
        if chosen is None and all(buffer is not None for buffer in current):
            return current
        return [
            np.zeros(self._params[i].shape, dtype=self._params[i].dtype) if current[i] is None else current[i]
            for i in (range(len(current)) if chosen is None else chosen)
        ]


class LambdaLR:
    """torch.optim.lr_scheduler.LambdaLR for gg.optim (and torch) optimisers:
    at each step(), every group's lr = its initial lr x lr_lambda(epoch), epoch
    counting step() calls from 0 (set at construction). lr_lambda may be one
    callable or one per group. With a gg.Guard, schedule the guard instead:
    guard.set_lr(base_lr * factor), so that a backoff in force stays in force."""

    def __init__(self, optimizer, lr_lambda):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.base_lrs = [float(group["lr"]) for group in groups]
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * len(groups)
        if len(lambdas) != len(groups) or not all(callable(f) for f in lambdas):
            raise ValueError(f"lr_lambda must be a callable or {len(groups)} callables, one per group")
        self.lr_lambdas = lambdas
        self.last_epoch = -1
        self.step()

    def step(self):
        self.last_epoch += 1
        for group, base, factor in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base * float(factor(self.last_epoch))

    def get_last_lr(self):
        return [float(group["lr"]) for group in self.optimizer.param_groups]


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
