"""The machinery every gg.optim optimiser shares: parameters snapshotted at
construction (in parameter groups), state buffers named as in torch.optim,
hyperparameters checked by the optimiser's settings description, and one C++
call a step (multi_tensor/optimizer.h), which validates every array before
anything is written."""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping, MutableMapping
from typing import Optional, Union

import numpy as np

from .. import _core
from .._arguments import Arrays, as_array_list, boolean, in_order_of, name_of, positive_int, real
from ..amp import LossScaler
from ..clip import CLIP_EPS
from .report import StepReport

__all__ = ["Optimizer"]


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


class Optimizer:
    """Base of SGD, Adam, AdamW and RMSprop. A subclass names its settings
    description (settings_type: a Settings dataclass with the hyperparameters,
    their defaults and rules, state_names, active_states() and fill()); the
    constructor's signature and documentation are built from it:

        Optimizer(params, <hyperparameters>, max_grad_norm=None)

    params: a list or dict of arrays (one group), or a torch-style list of
    dicts, each with "params" and any hyperparameters to override.
    max_grad_norm: clip the gradients' global L2 norm at this inside the step.
    """

    settings_type = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        settings = cls.settings_type
        if len(settings.state_names) > _core.STATE_SLOTS:
            raise TypeError(
                f"{cls.__name__} keeps {len(settings.state_names)} state buffers; the core has {_core.STATE_SLOTS} slots"
            )
        cls.__signature__ = inspect.Signature(
            [inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + settings.parameters()
            + [inspect.Parameter("max_grad_norm", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)]
        )
        cls.__doc__ = f"{cls.__doc__}\n\nHyperparameters ({settings.__name__}):\n{settings.documentation()}\n"

    def __init__(self, params, *args, **kwargs):
        names = self.settings_type.names()
        if "max_grad_norm" in kwargs:
            max_grad_norm = kwargs.pop("max_grad_norm")
        elif len(args) > len(names):  # positional, after every hyperparameter, as in the signature
            args, max_grad_norm = args[: len(names)], args[len(names)]
        else:
            max_grad_norm = None
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names) + 2} positional arguments")
        self.defaults = self.settings_type(*args, **kwargs).as_dict()
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
            group_hyper = self._checked({**self.defaults, **overrides}).as_dict()
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
        self._group_sizes = [len(group["params"]) for group in self.param_groups]
        self._group_of = np.repeat(np.arange(len(self.param_groups)), self._group_sizes)
        self.max_grad_norm = real(max_grad_norm, "max_grad_norm", low=0.0, allow_none=True)
        self.step_count = 0
        self._param_steps = np.zeros(len(self._params), dtype=np.int64)  # steps each parameter has taken
        self._steps_differ = False  # whether a None gradient has left some parameters behind
        self.state = {name: [None] * len(self._params) for name in self.settings_type.state_names}
        self._complete_states = set()  # states whose buffers all exist (see _missing_buffers)

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
    def names(self) -> Optional[tuple]:
        """The parameters' names, all groups in order (None when they were given as lists)."""
        return tuple(self._names) if self._names is not None else None

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
    def _checked(self, hyper):
        """The settings description of one group's hyperparameters (a Mapping with every key), checked."""
        return self.settings_type(**{name: hyper[name] for name in self.defaults})

    def _checked_groups(self):
        """Every group's settings, checked (they may have been edited since the last step)."""
        self._check_group_layout()
        checked = []
        for index, group in enumerate(self.param_groups):
            try:
                checked.append(self._checked(group))
            except (TypeError, ValueError) as error:
                raise type(error)(f"param_groups[{index}]: {error}") from None
        return checked

    def _check_group_layout(self):
        """Refuse a step after the groups' parameters were edited (a group removed,
        added or given other arrays): the parameters, their state and step counts
        are laid out once, at construction, and an edit would step the wrong
        arrays at the wrong rates. Hyperparameters may be edited freely."""
        groups = self.param_groups
        if not isinstance(groups, list) or len(groups) != len(self._group_sizes):
            count = len(groups) if isinstance(groups, list) else type(groups).__name__
            raise ValueError(
                f"opt.param_groups now holds {count} groups; this optimiser was made with {len(self._group_sizes)}. "
                "gg.optim lays its parameters out at construction: make a new optimiser for other parameters"
            )
        start = 0
        for index, (group, size) in enumerate(zip(groups, self._group_sizes)):
            params = group.get("params") if isinstance(group, Mapping) else None
            expected = self._params[start : start + size]
            start += size
            if not isinstance(params, list) or len(params) != size or not all(map(operator.is_, params, expected)):
                raise ValueError(
                    f"opt.param_groups[{index}]['params'] was changed since construction; gg.optim lays its "
                    "parameters out at construction: make a new optimiser for other parameters"
                )

    def _kernel_settings(self, settings, step, fresh):
        """The core's OptimizerStep for one group at one step count (fresh: the
        parameters' state buffers are new): every field of the description that
        the core has by the same name, then the description's own fill (derived
        values: bias corrections, betas)."""
        kernel = _core.OptimizerStep()
        kernel.kind = settings.kind
        for name, value in settings.as_dict().items():
            if hasattr(kernel, name):
                setattr(kernel, name, value)
        settings.fill(kernel, step, fresh)
        return kernel

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
        groups = self._loaded_groups(state_dict)
        max_grad_norm = real(state_dict["max_grad_norm"], "max_grad_norm", low=0.0, allow_none=True)
        step = positive_int(state_dict["step"], "step", minimum=0)
        param_steps = self._loaded_steps(state_dict, step)
        buffers = self._loaded_buffers(state_dict["state"], groups, param_steps, step)
        for group, settings in zip(self.param_groups, groups):
            group.update(settings.as_dict())
        self.max_grad_norm, self.step_count, self.state = max_grad_norm, step, buffers
        self._complete_states = set()
        self._param_steps = param_steps
        self._steps_differ = bool(len(param_steps)) and bool((param_steps != step).any())

    def _loaded_groups(self, state_dict):
        """Each group's settings from a state_dict ("hyper" is the first group's,
        what state_dicts held before parameter groups)."""
        given_groups = state_dict.get("param_groups", [state_dict["hyper"]])
        if not isinstance(given_groups, (list, tuple)) or len(given_groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict has {len(given_groups) if isinstance(given_groups, (list, tuple)) else 'no list of'} "
                f"parameter groups; this optimizer has {len(self.param_groups)}"
            )

        def checked(hyper, label):
            if not isinstance(hyper, Mapping):
                raise TypeError(f"{label} must be a dict")
            if set(hyper) != set(self.defaults):
                raise ValueError(
                    f"{label} has keys {sorted(hyper)}; {type(self).__name__} takes {sorted(self.defaults)}"
                )
            try:
                return self._checked(hyper)
            except (TypeError, ValueError) as error:
                raise type(error)(f"{label}: {error}") from None

        labels = (
            [f"state_dict['param_groups'][{index}]" for index in range(len(given_groups))]
            if "param_groups" in state_dict
            else ["state_dict['hyper']"]
        )
        groups = [checked(hyper, label) for hyper, label in zip(given_groups, labels)]
        if given_groups[0] is not state_dict["hyper"]:
            first = state_dict["hyper"]
            if not isinstance(first, Mapping) or set(first) != set(self.defaults) or self._checked(first) != groups[0]:
                raise ValueError("state_dict['hyper'] must be state_dict['param_groups'][0]'s hyperparameters")
        return groups

    def _loaded_steps(self, state_dict, step):
        param_steps = state_dict.get("param_steps", [step] * len(self._params))
        if not isinstance(param_steps, (list, tuple)) or len(param_steps) != len(self._params):
            raise ValueError(f"state_dict['param_steps'] must hold one step count per parameter ({len(self._params)})")
        return np.array([positive_int(n, "param_steps", minimum=0) for n in param_steps], dtype=np.int64)

    def _loaded_buffers(self, state, groups, param_steps, step):
        """The state buffers, as copies in the parameters' dtypes; a buffer that
        an active state needs after a step was taken must be there."""
        state_names = self.settings_type.state_names
        if not isinstance(state, Mapping):
            raise TypeError("state_dict['state'] must be a dict of state name -> list of buffers")
        unexpected = [name for name in state if name not in state_names]
        if unexpected:
            raise ValueError(
                f"state_dict['state'] has {unexpected}, which {type(self).__name__} does not keep "
                f"(it keeps {list(state_names)})"
            )
        active = {name for settings in groups for name in settings.active_states()}
        buffers = {}
        for name in state_names:
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
        return buffers

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
        grad_list, chosen, groups, buffers, arguments = self._prepared_step(
            grads, loss_scaler, skip_nonfinite, return_report, grad_norm
        )
        step_names = arguments["names"]
        norm, coefficient, skipped, nonfinite_indices, update_norms, param_norms = _core.optimizer_step(**arguments)
        stepping = range(len(self._params)) if chosen is None else chosen
        nonfinite = tuple((step_names or list(stepping))[i] for i in nonfinite_indices)
        if skipped:
            if loss_scaler is not None:
                loss_scaler.update(True)
        else:
            self._commit(buffers, chosen)
            if loss_scaler is not None:
                loss_scaler.update(False)
        if return_report and update_norms is not None and chosen is not None:
            update_norms, param_norms = self._spread(update_norms, chosen), self._spread(param_norms, chosen)
        report = StepReport(norm, coefficient, skipped, nonfinite, update_norms, param_norms, self.names)
        return report if return_report else norm

    def check_step(self, grads: Arrays, loss_scaler: Optional[LossScaler] = None) -> None:
        """Everything step(grads, loss_scaler) would refuse, refused here, with
        nothing read for the norm and nothing written: the gradients (matched
        by name, shapes, dtypes, memory), the hyperparameters of every group,
        the loss scaler. gradguard.distributed checks every rank's step this way
        before any rank steps."""
        self._prepared_step(grads, loss_scaler, False, False, None, check_only=True)

    def _prepared_step(self, grads, loss_scaler, skip_nonfinite, return_report, grad_norm, check_only=False):
        """(grad_list, chosen, group settings, new state buffers, the core call's
        arguments) of one step, every argument checked; with check_only, the
        core validates the arrays too and stops there."""
        grad_list = self._matched_grads(grads)
        groups = self._checked_groups()
        # chosen: the parameters stepping (None: all of them, the common case, kept cheap).
        chosen = None
        if any(grad is None for grad in grad_list):
            chosen = [index for index, grad in enumerate(grad_list) if grad is not None]
        policy = self._policy(loss_scaler, skip_nonfinite, return_report, grad_norm)
        settings, settings_of = self._step_settings(groups, chosen)
        groups_stepping = range(len(groups)) if chosen is None else set(self._group_of[chosen].tolist())
        active = {name for group in groups_stepping for name in groups[group].active_states()}
        # New buffers are committed to self.state only once the step has been accepted;
        # a check needs only the existing ones (new zero buffers are valid by construction).
        buffers = {
            name: self._existing_buffers(name, chosen) if check_only else self._buffers_for(name, chosen)
            for name in self.settings_type.state_names
            if name in active
        }
        step_names = self._names if chosen is None or self._names is None else [self._names[i] for i in chosen]
        arguments = dict(
            params=self._params if chosen is None else [self._params[i] for i in chosen],
            grads=grad_list if chosen is None else [grad_list[i] for i in chosen],
            states=[(name, buffers.get(name)) for name in self.settings_type.state_names],
            settings=settings,
            settings_of=settings_of,
            policy=policy,
            names=step_names,
        )
        if check_only:
            _core.optimizer_step(**arguments, check_only=True)
        return grad_list, chosen, groups, buffers, arguments

    def _matched_grads(self, grads):
        """The gradients as a list in parameter order (matched by name when both sides are named)."""
        grad_list, names = as_array_list(grads, "grads")
        grad_list = in_order_of(self._names, grad_list, names)
        if len(grad_list) != len(self._params):
            raise ValueError(f"grads has {len(grad_list)} arrays for {len(self._params)} params")
        return grad_list

    def _policy(self, loss_scaler, skip_nonfinite, return_report, grad_norm):
        """The core's StepPolicy for this step: whether the norm is taken (or given), the clip, the loss scale."""
        if loss_scaler is not None and not (hasattr(loss_scaler, "get_scale") and hasattr(loss_scaler, "update")):
            raise TypeError(f"loss_scaler must be a gg.LossScaler, not {type(loss_scaler).__name__}")
        # Checked at every step: opt.max_grad_norm may have been set since the last one.
        max_grad_norm = real(self.max_grad_norm, "max_grad_norm", low=0.0, allow_none=True)
        policy = _core.StepPolicy()
        policy.inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
        skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        policy.want_norm = max_grad_norm is not None or loss_scaler is not None or skip_nonfinite
        if grad_norm is not None:
            policy.known_norm = real(grad_norm, "grad_norm", low=0.0) / policy.inverse_scale
        if max_grad_norm is not None:
            policy.max_norm = max_grad_norm
        policy.clip_eps = CLIP_EPS
        policy.skip_nonfinite = loss_scaler is not None or skip_nonfinite
        policy.want_step_norms = boolean(return_report, "return_report")
        return policy

    def _commit(self, buffers, chosen):
        """An accepted step: new buffers kept, step counts advanced."""
        stepping = range(len(self._params)) if chosen is None else chosen
        for name, stepped in buffers.items():
            current = self.state[name]
            for index, buffer in zip(stepping, stepped):
                if current[index] is None:
                    current[index] = buffer
        if chosen is None:
            self._param_steps += 1
        else:
            self._param_steps[chosen] += 1
            self._steps_differ = self._steps_differ or len(chosen) != len(self._params)
        self.step_count += 1

    def _step_settings(self, groups, chosen):
        """(settings, settings_of): one kernel settings per (group, step count, fresh
        state) among the stepping parameters, and each one's index into them
        (empty: all use the first). A parameter that skipped steps keeps its own
        bias correction, as in torch; a parameter whose state buffers are new
        this step (its first step, or momentum switched on mid-run) is `fresh`:
        SGD's momentum buffer then starts as the gradient, as torch's does."""
        fresh = self._freshness(groups, chosen)
        if not self._steps_differ and not isinstance(fresh, np.ndarray):
            step = self.step_count + 1
            if len(groups) == 1:
                return [self._kernel_settings(groups[0], step, fresh)], []
            group_of = self._group_of if chosen is None else self._group_of[chosen]
            return [self._kernel_settings(settings, step, fresh) for settings in groups], group_of.tolist()
        group_of = self._group_of if chosen is None else self._group_of[chosen]
        steps = (self._param_steps if chosen is None else self._param_steps[chosen]) + 1
        keys = np.stack([group_of, steps, np.broadcast_to(np.asarray(fresh, dtype=np.int64), steps.shape)], axis=1)
        if not len(keys):
            return [self._kernel_settings(groups[0], self.step_count + 1, False)], []
        distinct, settings_of = np.unique(keys, axis=0, return_inverse=True)
        settings = [self._kernel_settings(groups[int(group)], int(step), bool(new)) for group, step, new in distinct]
        return settings, settings_of.reshape(-1).tolist()

    def _missing_buffers(self, name) -> bool:
        """Whether some parameter has no buffer of this state yet. Once a state's
        buffers are all there they stay (until load_state_dict), so that is
        remembered: the common step asks without a pass over the parameters."""
        if name in self._complete_states:
            return False
        if all(buffer is not None for buffer in self.state[name]):
            self._complete_states.add(name)
            return False
        return True

    def _freshness(self, groups, chosen):
        """Whether the stepping parameters' active state buffers are new this step:
        a bool when alike for all of them (the common case, found without a
        per-parameter array), else a bool array over the stepping parameters."""
        names = {name for settings in groups for name in settings.active_states()}
        incomplete = [name for name in names if self._missing_buffers(name)]
        if not incomplete:
            return False
        fresh = np.zeros(len(self._params), dtype=bool)
        for name in incomplete:
            active = np.array([name in settings.active_states() for settings in groups], dtype=bool)[self._group_of]
            fresh |= active & np.fromiter((buffer is None for buffer in self.state[name]), bool, len(self._params))
        fresh = fresh if chosen is None else fresh[chosen]
        if fresh.all() or not fresh.any():
            return bool(fresh.all()) if len(fresh) else False
        return fresh

    def _spread(self, values, chosen):
        full = np.full(len(self._params), np.nan)
        full[chosen] = values
        return full

    def _existing_buffers(self, name, chosen):
        """The stepping parameters' buffers of one state when they all exist, else None."""
        current = [self.state[name][i] for i in (range(len(self._params)) if chosen is None else chosen)]
        return None if any(buffer is None for buffer in current) else current

    def _buffers_for(self, name, chosen):
        """The state buffers of the stepping parameters (new zero buffers where none yet)."""
        current = self.state[name]
        if chosen is None and not self._missing_buffers(name):
            return current
        return [
            np.zeros(self._params[i].shape, dtype=self._params[i].dtype) if current[i] is None else current[i]
            for i in (range(len(current)) if chosen is None else chosen)
        ]
