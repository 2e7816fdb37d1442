"""Learning-rate schedules for gg.optim (and torch) optimisers."""

from __future__ import annotations

import math

from .._arguments import positive_int, real, state_entries

__all__ = ["LambdaLR"]


class LambdaLR:
    """torch.optim.lr_scheduler.LambdaLR for gg.optim (and torch) optimisers:
    at each step(), every group's

        lr_i = base_lr_i x lr_lambda_i(epoch)

    with base_lr_i the group's lr at construction and epoch counting step()
    calls from 0 (set at construction). lr_lambda may be one callable or one
    per group. Every group's new rate is computed (and checked: a finite number
    >= 0) before any is set, so a lambda that raises or returns NaN changes
    nothing. With a gg.Guard, schedule the guard instead:
    guard.set_lr(base_lr * factor), so that a backoff in force stays in force.
    state_dict() / load_state_dict() resume the schedule (the lambdas are code:
    they are not saved, as in torch for plain functions)."""

    def __init__(self, optimizer, lr_lambda):
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.base_lrs = [
            real(float(group["lr"]), f"param_groups[{i}]['lr']", low=0.0) for i, group in enumerate(groups)
        ]
        lambdas = list(lr_lambda) if isinstance(lr_lambda, (list, tuple)) else [lr_lambda] * len(groups)
        if len(lambdas) != len(groups) or not all(callable(f) for f in lambdas):
            raise ValueError(f"lr_lambda must be a callable or {len(groups)} callables, one per group")
        self.lr_lambdas = lambdas
        self.last_epoch = -1
        self.step()

    def _rates(self, epoch, bases=None):
        """Every group's lr at `epoch` (from `bases`, default the schedule's), checked, nothing set."""
        bases = self.base_lrs if bases is None else bases
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise ValueError(
                f"the optimiser has {len(groups)} parameter groups; this schedule was made for {len(self.base_lrs)}"
            )
        rates = []
        for index, (base, factor) in enumerate(zip(bases, self.lr_lambdas)):
            value = factor(epoch)
            value = real(float(value) if hasattr(value, "__float__") else value, f"lr_lambda[{index}]({epoch})")
            rate = base * value
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"lr_lambda[{index}]({epoch}) = {value!r} gives lr {rate!r}; lr must be finite, >= 0")
            rates.append(rate)
        return rates

    def step(self) -> None:
        """Advance one epoch and set every group's lr (all or none)."""
        rates = self._rates(self.last_epoch + 1)
        self.last_epoch += 1
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate

    def get_last_lr(self) -> list:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        """{'base_lrs', 'last_epoch'}: enough to resume (with the same lambdas)."""
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict) -> None:
        """Restore a state_dict() and set the groups' rates for its epoch; validated
        first (a rate per group, finite and >= 0; an epoch >= 0), nothing changes unless all of it is valid."""
        state = state_entries(state_dict, "LambdaLR", ("base_lrs", "last_epoch"))
        bases = state["base_lrs"]
        if not isinstance(bases, (list, tuple)) or len(bases) != len(self.base_lrs):
            raise ValueError(f"LambdaLR state_dict: base_lrs must hold {len(self.base_lrs)} rates, one per group")
        bases = [real(base, f"base_lrs[{i}]", low=0.0, allow_inf=False) for i, base in enumerate(bases)]
        epoch = positive_int(state["last_epoch"], "last_epoch", minimum=0)
        rates = self._rates(epoch, bases)
        self.base_lrs, self.last_epoch = bases, epoch
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate
