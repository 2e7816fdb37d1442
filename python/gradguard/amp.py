"""Mixed precision: unscaling gradients with an overflow check, and a dynamic
loss scaler with torch.amp.GradScaler's update rule."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, positive_int, real

__all__ = ["unscale_", "LossScaler"]


def unscale_(grads: Arrays, inv_scale: Real) -> bool:
    """Multiply every gradient by inv_scale in place; return whether any was NaN or inf.

    One pass over the gradients (torch's _amp_foreach_non_finite_check_and_unscale_):
    grads[i] *= inv_scale for every i (16-bit gradients in float32, rounded
    once), and found_inf = any(not isfinite(g)) over the values seen. Every
    gradient is validated (writable, contiguous, aligned, not overlapping
    another) before any is written.
    """
    array_list, names = as_array_list(grads, "grads")
    factor = real(inv_scale, "inv_scale", allow_inf=False)
    return bool(_core.unscale(array_list, factor, names))


# torch keeps the scale in a float32 tensor: it never grows past this.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class LossScaler:
    """Dynamic loss scaling (torch.amp.GradScaler's rule).

    scale(loss) = loss * scale. After each step, update(found_inf):
    an overflow multiplies the scale by backoff_factor and restarts the count;
    growth_interval steps in a row without one multiply it by growth_factor,
    unless the grown scale would leave the float32 range (then it stays, as
    in torch, and the count restarts).
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        settings = self._checked(init_scale, growth_factor, backoff_factor, growth_interval, 0)
        self._scale, self.growth_factor, self.backoff_factor, self.growth_interval, self._growth_tracker = settings

    @staticmethod
    def _checked(scale, growth_factor, backoff_factor, growth_interval, growth_tracker):
        """The settings validated by one set of rules, for the constructor and load_state_dict alike."""
        return (
            real(scale, "init_scale", low=0.0, low_open=True, high=_FLOAT32_MAX),
            real(growth_factor, "growth_factor", low=1.0, low_open=True, allow_inf=False),
            real(backoff_factor, "backoff_factor", low=0.0, high=1.0, low_open=True, high_open=True),
            positive_int(growth_interval, "growth_interval"),
            positive_int(growth_tracker, "_growth_tracker", minimum=0),
        )

    def get_scale(self) -> float:
        return self._scale

    def scale(self, loss):
        """loss * scale (any NumPy value or array, or a Python float)."""
        return loss * self._scale

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                grown = self._scale * self.growth_factor
                if grown <= _FLOAT32_MAX:
                    self._scale = grown
                self._growth_tracker = 0

    def state_dict(self) -> dict:
        return {
            "scale": self._scale,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "_growth_tracker": self._growth_tracker,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state_dict(); it is validated with the constructor's rules, and
        nothing changes unless all of it is valid."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        keys = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
        missing = [key for key in keys if key not in state]
        if missing:
            raise KeyError(f"LossScaler state is missing {missing}")
        settings = self._checked(*(state[key] for key in keys))
        if settings[4] >= settings[3]:
            raise ValueError(f"_growth_tracker ({settings[4]}) must be below growth_interval ({settings[3]})")
        self._scale, self.growth_factor, self.backoff_factor, self.growth_interval, self._growth_tracker = settings
