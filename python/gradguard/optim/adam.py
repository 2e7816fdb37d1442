"""Adam and AdamW (torch.optim's formulas)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _core
from .._settings import Settings, flag, number, pair, setting
from .base import Optimizer

__all__ = ["Adam", "AdamW", "AdamSettings", "AdamWSettings"]

_RATE = number(low=0.0, allow_inf=False)


@dataclass(frozen=True)
class AdamSettings(Settings):
    lr: float = setting(1e-3, _RATE, "learning rate, >= 0")
    betas: tuple = setting(
        (0.9, 0.999), pair(number(low=0.0, high=1.0, high_open=True), "(beta1, beta2)"), "moment decays, in [0, 1)"
    )
    eps: float = setting(1e-8, _RATE, "added to the denominator, >= 0")
    weight_decay: float = setting(0.0, _RATE, "L2 penalty added to the gradient, >= 0")
    amsgrad: bool = setting(False, flag, "keep the maximum of the second moment")

    kind = _core.OptimizerKind.adam
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    decoupled = False  # AdamW: p *= 1 - lr * weight_decay instead of the L2 penalty

    def active_states(self) -> tuple:
        return self.state_names if self.amsgrad else self.state_names[:2]

    def fill(self, kernel, step: int, fresh: bool) -> None:
        beta1, beta2 = self.betas
        kernel.beta1, kernel.beta2 = beta1, beta2
        kernel.decoupled_weight_decay = self.decoupled
        kernel.step_size = self.lr / (1.0 - beta1**step)
        kernel.bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)


@dataclass(frozen=True)
class AdamWSettings(AdamSettings):
    weight_decay: float = setting(1e-2, _RATE, "decoupled weight decay, >= 0")

    decoupled = True


class Adam(Optimizer):
    """torch.optim.Adam: g += wd * p;
    m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2 (amsgrad: v_max = max(v_max, v));
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    State: exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad)."""

    settings_type = AdamSettings


class AdamW(Optimizer):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay."""

    settings_type = AdamWSettings
