"""Learning-rate schedules for gg.optim (and torch) optimisers."""

from __future__ import annotations

__all__ = ["LambdaLR"]


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
