"""gg.Guard: training-stability policies around a gg.optim optimiser.

"Track the gradients; if they explode, clip; if they vanish, change the
model": the guard makes the first half automatic. Each step it reads the
gradients once for their global norm, then hands that norm to the optimiser's
fused step (which does not read them again), and acts:

- a step whose gradients hold inf/NaN is skipped (nothing changes);
- the norm is clipped at a fixed bound, or at the threshold of an adaptive
  clipper (gg.ZClip, gg.AutoClip) that follows the run's own norms;
- an explosion (non-finite gradients, or a norm above `explosion_factor`
  times the median of the recent finite norms) counts; `backoff_after` of
  them within `window` steps multiply the learning rate by `lr_backoff`, which
  then grows back to its base by equal factors over `recovery_steps` calm
  steps;
- optionally (`snapshot_every`), the parameters and optimiser state are kept
  every so many good steps (one copy: bounded memory) and restored after
  `restore_after` explosions in a row, or a non-finite loss.

Every action is recorded as a GuardAction (step, cause, action, detail), in
`guard.actions` and, when a monitor is attached, in its report.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, as_array_list, boolean, positive_int, real, state_entries
from .adaptive import AutoClip, ZClip

__all__ = ["Guard", "GuardAction"]


def norm_after_clip(norm, report):
    """The global norm the optimiser applied: the norm before the clip times
    the step's clip coefficient (None when the step was skipped or replaced)."""
    if report is None or report.skipped:
        return None
    return norm * report.clip_coef


@dataclass(frozen=True)
class GuardAction:
    step: int
    cause: str  # "nonfinite", "explosion", "divergence", "calm"
    action: str  # "skipped step", "lr backoff", "lr restored", "restored snapshot"
    detail: str = ""

    @classmethod
    def from_dict(cls, entry) -> GuardAction:
        """The action a dataclasses.asdict() of one gave (from a guard's or a monitor's state_dict), checked."""
        entry = state_entries(entry, "GuardAction", ("step", "cause", "action", "detail"))
        step = positive_int(entry["step"], "an action's step", minimum=0)
        if not all(isinstance(entry[key], str) for key in ("cause", "action", "detail")):
            raise TypeError("an action's cause, action and detail are strings")
        return cls(step, entry["cause"], entry["action"], entry["detail"])


def _copied(param):
    """A copy of a parameter: a NumPy array, or a torch tensor on its device (the torch Guard's device path)."""
    return param.detach().clone() if hasattr(param, "detach") else param.copy()


def _listed(value, argument) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"Guard state_dict: {argument} must be a list, not {type(value).__name__}")
    return list(value)


class Guard:
    """Wraps a gg.optim optimiser (SGD, Adam, AdamW, RMSprop) with stability policies.

    Args:
        optimizer: the optimiser; its learning rates are its param_groups' "lr" (a schedule sets
            it through guard.set_lr, so that a backoff in force stays in force).
        clip: None, a fixed max norm (float), or an adaptive clipper (gg.ZClip(),
            gg.AutoClip()); "zclip" / "autoclip" make one with its defaults.
        monitor: an optional GradientMonitor fed every step with the step's report.
        skip_nonfinite: skip steps whose gradients hold inf/NaN (default on).
        explosion_factor, window: an explosion is a non-finite step or a norm above
            explosion_factor x the median of the last `window` finite norms
            (once 5 are known).
        backoff_after, lr_backoff, recovery_steps: that many explosions within
            `window` steps multiply the learning rate by lr_backoff (never below
            lr_floor x base); it returns to base over recovery_steps calm steps.
        snapshot_every, restore_after: keep a snapshot every snapshot_every good
            steps (None: never), and restore it after restore_after explosions in
            a row or a non-finite loss.
    """

    def __init__(
        self,
        optimizer,
        clip: Union[None, float, str, ZClip, AutoClip] = None,
        monitor=None,
        *,
        skip_nonfinite: bool = True,
        explosion_factor: float = 10.0,
        window: int = 50,
        backoff_after: int = 2,
        lr_backoff: float = 0.5,
        lr_floor: float = 1e-3,
        recovery_steps: int = 100,
        snapshot_every: Optional[int] = None,
        restore_after: int = 3,
    ):
        if clip == "zclip":
            clip = ZClip()
        elif clip == "autoclip":
            clip = AutoClip()
        elif clip is not None and not isinstance(clip, (ZClip, AutoClip)):
            clip = real(clip, "clip", low=0.0)
        self.optimizer, self.clip, self.monitor = optimizer, clip, monitor
        self.skip_nonfinite = boolean(skip_nonfinite, "skip_nonfinite")
        self.explosion_factor = real(explosion_factor, "explosion_factor", low=1.0, allow_inf=False)
        self.window = positive_int(window, "window")
        self.backoff_after = positive_int(backoff_after, "backoff_after")
        self.lr_backoff = real(lr_backoff, "lr_backoff", low=0.0, high=1.0, low_open=True, high_open=True)
        self.lr_floor = real(lr_floor, "lr_floor", low=0.0, high=1.0)
        self.recovery_steps = positive_int(recovery_steps, "recovery_steps")
        self.snapshot_every = None if snapshot_every is None else positive_int(snapshot_every, "snapshot_every")
        self.restore_after = positive_int(restore_after, "restore_after")
        # Each group's base rate; the backoff in force scales them alike: group i runs at base_i x lr_scale.
        self._base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.lr_scale = 1.0
        self.actions = []
        self.step_count = 0
        self._norms = deque(maxlen=self.window)
        self._explosions = deque()
        self._in_a_row = 0
        self._good_steps = 0
        self._snapshot = None

    # -- the learning rate --------------------------------------------------------------------
    def set_lr(self, lr: float) -> None:
        """Set the base learning rate (a schedule calls this each step): the
        first group's, the other groups keeping their ratio to it. The
        optimiser runs at the base times the backoff in force."""
        lr = real(lr, "lr", low=0.0, allow_inf=False)
        first = self._base_lrs[0]
        self._base_lrs = [lr] + [lr * base / first if first > 0 else lr for base in self._base_lrs[1:]]
        self._scale_lr(self.lr_scale)

    @property
    def base_lr(self) -> float:
        """The first group's base learning rate (before any backoff)."""
        return self._base_lrs[0]

    def _scale_lr(self, scale):
        self.lr_scale = scale
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * scale

    # -- the step --------------------------------------------------------------------------
    def step(self, grads: Arrays, loss: Optional[float] = None, *, allow_missing: bool = False):
        """One guarded step: returns the optimiser's StepReport (None when the step
        was skipped or replaced by a restore).

        Everything the step could refuse is checked before anything changes:
        the gradients (optimizer.check_step: names, shapes, dtypes, memory, the
        hyperparameters), the monitor's layers, the loss (a real number; NaN
        and inf are accepted: they are what the guard is for). A refused step
        raises and leaves the guard, its clipper, the optimiser, the parameters
        and the monitor as they were. allow_missing: the monitor may miss the
        layers without a gradient this step (the torch Guard's None gradients)."""
        array_list, names = as_array_list(grads, "grads")
        grads = array_list if names is None else dict(zip(names, array_list))  # one snapshot: a generator is read once
        loss = self._checked(grads, loss, allow_missing)
        norm, _ = _core.global_norm(array_list, 2.0, names)

        def record(step, report):
            after = norm_after_clip(norm, report)
            self.monitor.update(
                grads, step=step, step_report=report, allow_missing=allow_missing, norm_after_clip=after, loss=loss
            )

        return self._policies(grads, norm, loss, record)

    def _checked(self, grads, loss, allow_missing):
        """Everything the step refuses, refused before anything changes; the loss as a float (or None)."""
        loss = real(loss, "loss", allow_none=True, allow_nan=True)
        self.optimizer.check_step(grads)
        if self.monitor is not None:
            self.monitor.check_update(grads, allow_missing=allow_missing)
        return loss

    def _recorder(self, stats, allow_missing, loss):
        """record(step, report) for statistics taken before the step (an adapter
        whose clip writes into the gradients must read them first)."""

        def record(step, report):
            after = norm_after_clip(stats.global_norm, report)
            self.monitor.update_stats(stats, step=step, allow_missing=allow_missing, norm_after_clip=after, loss=loss)

        return record

    def _policies(self, grads, norm, loss, record):
        """The step once everything is checked and the global norm known: the
        policies, the optimiser's step (given the norm), then record(step,
        report) feeds the monitor (an adapter whose gradients live elsewhere
        feeds it its own way)."""
        step = self.step_count
        self.step_count += 1
        nonfinite = not math.isfinite(norm) or (loss is not None and not math.isfinite(loss))
        explosion = nonfinite or self._is_spike(norm)
        report = None
        if explosion:
            self._note_explosion(step, "nonfinite" if nonfinite else "explosion", norm)
        if self._in_a_row >= self.restore_after or (loss is not None and not math.isfinite(loss)):
            if self._restore(step, norm):
                return None
        if nonfinite and self.skip_nonfinite:
            self._act(step, "nonfinite", "skipped step", f"global norm {norm:.3g}")
        else:
            if self.clip is not None and math.isfinite(norm):  # a non-finite norm must not enter the clipper's history
                threshold = self.clip if isinstance(self.clip, float) else self.clip.observe(norm)
                self.optimizer.max_grad_norm = threshold if math.isfinite(threshold) else None
            report = self.optimizer.step(
                grads,
                return_report=True,
                skip_nonfinite=self.skip_nonfinite,
                grad_norm=norm if math.isfinite(norm) else None,
            )
            if not explosion:
                self._calm_step(step, norm)
        if self.monitor is not None:
            record(step, report)
        return report

    # -- policies ----------------------------------------------------------------------------
    def _is_spike(self, norm):
        if len(self._norms) < 5:
            return False
        return norm > self.explosion_factor * float(np.median(np.fromiter(self._norms, float)))

    def _note_explosion(self, step, cause, norm):
        self._in_a_row += 1
        self._explosions.append(step)
        while self._explosions and self._explosions[0] <= step - self.window:
            self._explosions.popleft()
        if len(self._explosions) >= self.backoff_after:
            scale = max(self.lr_scale * self.lr_backoff, self.lr_floor)
            if scale < self.lr_scale:
                self._scale_lr(scale)
                self._act(
                    step,
                    cause,
                    "lr backoff",
                    f"lr x{scale:.3g} of its base after "
                    f"{len(self._explosions)} explosions in {self.window} steps (norm {norm:.3g})",
                )
            self._explosions.clear()

    def _calm_step(self, step, norm):
        self._in_a_row = 0
        self._norms.append(norm)
        if self.lr_scale < 1.0:
            grown = self.lr_scale * (1.0 / self.lr_backoff) ** (1.0 / self.recovery_steps)
            if grown >= 1.0 - 1e-9:  # the last factor lands on the base, up to rounding
                grown = 1.0
            self._scale_lr(grown)
            if grown == 1.0:
                self._act(step, "calm", "lr restored", f"lr back to its base {self.base_lr:.3g}")
        self._good_steps += 1
        if self.snapshot_every is not None and self._good_steps % self.snapshot_every == 0:
            self._snapshot = ([_copied(p) for p in self.optimizer.params], self.optimizer.state_dict())

    def _restore(self, step, norm):
        if self._snapshot is None:
            return False
        params, state = self._snapshot
        targets = self.optimizer.params
        changed = [
            f"params[{index}] is now {target.dtype}{target.shape}, the snapshot's {saved.dtype}{saved.shape}"
            for index, (target, saved) in enumerate(zip(targets, params))
            if target.shape != saved.shape or target.dtype != saved.dtype
        ]
        if len(targets) != len(params) or changed:
            raise RuntimeError(
                "gg.Guard cannot restore its snapshot: the parameters changed since it was taken "
                f"({len(targets)} parameters, the snapshot {len(params)}; {'; '.join(changed[:3]) or 'a parameter added or removed'})"
            )
        self.optimizer.load_state_dict(state)  # validated before it writes: a refusal here leaves the parameters alone
        for target, saved in zip(targets, params):
            target[...] = saved
        self._scale_lr(max(self.lr_scale * self.lr_backoff, self.lr_floor))
        self._in_a_row = 0
        self._act(
            step,
            "divergence",
            "restored snapshot",
            f"parameters and optimiser state of {self._good_steps} good steps ago at most; "
            f"lr {self.optimizer.param_groups[0]['lr']:.3g} (norm {norm:.3g})",
        )
        return True

    def _act(self, step, cause, action, detail):
        entry = GuardAction(step, cause, action, detail)
        self.actions.append(entry)
        if self.monitor is not None and hasattr(self.monitor, "note_action"):
            self.monitor.note_action(entry)

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs to act as the uninterrupted one would: the
        step count, the learning-rate backoff in force and each group's base
        rate, the recent finite norms and explosions, the streaks, the
        adaptive clipper's state, the actions taken and the snapshot (copies)."""
        snapshot = None
        if self._snapshot is not None:
            params, state = self._snapshot
            snapshot = {"params": [_copied(p) for p in params], "optimizer": copy.deepcopy(state)}
        return {
            "step_count": self.step_count,
            "lr_scale": self.lr_scale,
            "base_lrs": list(self._base_lrs),
            "norms": list(self._norms),
            "explosions": list(self._explosions),
            "in_a_row": self._in_a_row,
            "good_steps": self._good_steps,
            "clip": self.clip.state_dict() if isinstance(self.clip, (ZClip, AutoClip)) else self.clip,
            "actions": [asdict(action) for action in self.actions],
            "snapshot": snapshot,
        }

    def load_state_dict(self, state_dict) -> None:
        """Restore a state_dict() and set the optimiser's learning rates to the
        bases times the backoff it held. Validated first (numbers in range, one
        base rate per group, the clipper's state by the clipper's own rules, a
        snapshot of the parameters' shapes and dtypes); nothing changes unless
        all of it is valid."""
        state = state_entries(
            state_dict,
            "Guard",
            ("step_count", "lr_scale", "base_lrs", "norms", "explosions", "in_a_row", "good_steps", "clip", "actions"),
            ("snapshot",),
        )
        step_count = positive_int(state["step_count"], "step_count", minimum=0)
        lr_scale = real(state["lr_scale"], "lr_scale", low=0.0, high=1.0, low_open=True)
        bases = state["base_lrs"]
        if not isinstance(bases, (list, tuple)) or len(bases) != len(self.optimizer.param_groups):
            raise ValueError(
                f"Guard state_dict: base_lrs must hold one rate per group ({len(self.optimizer.param_groups)})"
            )
        bases = [real(base, f"base_lrs[{i}]", low=0.0, allow_inf=False) for i, base in enumerate(bases)]
        norms = [real(norm, "norms[]", low=0.0, allow_inf=False) for norm in _listed(state["norms"], "norms")]
        explosions = [
            positive_int(step, "explosions[]", minimum=0) for step in _listed(state["explosions"], "explosions")
        ]
        if any(step >= step_count for step in explosions) or explosions != sorted(explosions):
            raise ValueError("Guard state_dict: explosions must be earlier steps, in order")
        in_a_row = positive_int(state["in_a_row"], "in_a_row", minimum=0)
        good_steps = positive_int(state["good_steps"], "good_steps", minimum=0)
        clip = self._loaded_clip(state["clip"])
        actions = [GuardAction.from_dict(entry) for entry in _listed(state["actions"], "actions")]
        snapshot = self._loaded_snapshot(state["snapshot"])
        self.step_count, self._base_lrs, self._in_a_row, self._good_steps = step_count, bases, in_a_row, good_steps
        self._norms = deque(norms[-self.window :], maxlen=self.window)
        self._explosions = deque(explosions)
        self.clip, self.actions, self._snapshot = clip, actions, snapshot
        self._scale_lr(lr_scale)

    def _loaded_clip(self, saved):
        if isinstance(self.clip, (ZClip, AutoClip)):
            clip = copy.deepcopy(self.clip)  # loaded into a copy: a refusal leaves this guard's clipper alone
            clip.load_state_dict(saved)
            return clip
        if saved != self.clip and not (saved is None and self.clip is None):
            raise ValueError(f"Guard state_dict: clip {saved!r}; this guard clips at {self.clip!r}")
        return self.clip

    def _loaded_snapshot(self, saved):
        if saved is None:
            return None
        saved = state_entries(saved, "Guard snapshot", ("params", "optimizer"))
        targets = self.optimizer.params
        params = _listed(saved["params"], "snapshot['params']")
        if len(params) != len(targets):
            raise ValueError(
                f"Guard state_dict: the snapshot holds {len(params)} parameters; the optimiser {len(targets)}"
            )
        for index, (param, target) in enumerate(zip(params, targets)):
            if type(param) is not type(target) or param.shape != target.shape or param.dtype != target.dtype:
                what = f"{param.dtype}{param.shape}" if hasattr(param, "shape") else type(param).__name__
                raise ValueError(
                    f"Guard state_dict: snapshot['params'][{index}] is {what}; the parameter is {target.dtype}{target.shape}"
                )
        if not isinstance(saved["optimizer"], Mapping):
            raise TypeError("Guard state_dict: snapshot['optimizer'] must be the optimiser's state_dict()")
        return [_copied(p) for p in params], copy.deepcopy(saved["optimizer"])

    def summary(self) -> dict:
        """Counts of actions by kind, and the learning rate now."""
        counts = {}
        for entry in self.actions:
            counts[entry.action] = counts.get(entry.action, 0) + 1
        return {"steps": self.step_count, "actions": counts, "lr": float(self.optimizer.param_groups[0]["lr"])}
