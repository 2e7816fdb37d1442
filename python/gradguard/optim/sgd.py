"""SGD (torch.optim.SGD's formulas)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import _core
from .._settings import Settings, flag, number, setting
from .base import Optimizer

__all__ = ["SGD", "SGDSettings"]

_RATE = number(low=0.0, allow_inf=False)


@dataclass(frozen=True)
class SGDSettings(Settings):
    lr: float = setting(check=_RATE, doc="learning rate, >= 0")
    momentum: float = setting(0.0, _RATE, "momentum factor, >= 0")
    dampening: float = setting(0.0, number(low=0.0, high=1.0), "dampening of the momentum, in [0, 1]")
    weight_decay: float = setting(0.0, _RATE, "L2 penalty added to the gradient, >= 0")
    nesterov: bool = setting(False, flag, "Nesterov momentum (needs momentum > 0 and dampening = 0)")

    kind = _core.OptimizerKind.sgd
    state_names = ("momentum_buffer",)

    def check_together(self):
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")

    def active_states(self) -> tuple:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def fill(self, kernel, step: int, fresh: bool) -> None:
        # A new momentum buffer starts as the gradient (torch: buf = clone(g) when it has none),
        # on the first step or when momentum is switched on later.
        kernel.first_step = fresh


class SGD(Optimizer):
    """torch.optim.SGD: g += wd * p; buf = g (first step) or momentum * buf + (1 - dampening) * g;
    g = g + momentum * buf (nesterov) or buf; p -= lr * g. State: momentum_buffer."""

    settings_type = SGDSettings
