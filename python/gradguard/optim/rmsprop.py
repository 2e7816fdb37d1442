"""RMSprop (torch.optim.RMSprop's formulas)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _core
from .._settings import Settings, flag, number, setting
from .base import Optimizer

__all__ = ["RMSprop", "RMSpropSettings"]

_RATE = number(low=0.0, allow_inf=False)


@dataclass(frozen=True)
class RMSpropSettings(Settings):
    lr: float = setting(1e-2, _RATE, "learning rate, >= 0")
    alpha: float = setting(0.99, number(low=0.0, high=1.0), "smoothing of the squared average, in [0, 1]")
    eps: float = setting(1e-8, _RATE, "added to the denominator, >= 0")
    weight_decay: float = setting(0.0, _RATE, "L2 penalty added to the gradient, >= 0")
    momentum: float = setting(0.0, _RATE, "momentum factor, >= 0")
    centered: bool = setting(False, flag, "normalise by the estimated variance of the gradient")

    kind = _core.OptimizerKind.rmsprop
    state_names = ("square_avg", "momentum_buffer", "grad_avg")

    def active_states(self) -> tuple:
        return tuple(name for name, used in zip(self.state_names, (True, self.momentum > 0, self.centered)) if used)

    def fill(self, kernel, step: int, fresh: bool) -> None:
        pass  # every kernel setting is a field of the same name


class RMSprop(Optimizer):
    """torch.optim.RMSprop: g += wd * p; s = a s + (1 - a) g^2; avg = sqrt(s) + eps
    (centered: sqrt(s - ga^2) + eps with ga = a ga + (1 - a) g); buf = m buf + g / avg and
    p -= lr * buf (momentum > 0), else p -= lr * g / avg.
    State: square_avg, momentum_buffer (momentum > 0), grad_avg (centered)."""

    settings_type = RMSpropSettings
