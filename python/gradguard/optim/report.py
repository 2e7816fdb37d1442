"""What one optimiser step did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["StepReport"]


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
