"""Mixed precision: unscaling gradients with an overflow check, and a dynamic
loss scaler with torch.amp.GradScaler's update rule."""
from __future__ import annotations

import math

from . import _core
from ._arguments import as_array_list

__all__ = ["unscale_", "LossScaler"]


def unscale_(grads, inv_scale):
    """Multiply every gradient by inv_scale in place; return whether any was NaN or inf.

    One pass over the gradients (torch's _amp_foreach_non_finite_check_and_unscale_):
    grads[i] *= inv_scale for every i (16-bit gradients in float32, rounded
    once), and found_inf = any(not isfinite(g)) over the values seen.
    """
    array_list, names = as_array_list(grads, "grads")
    factor = float(inv_scale)
    if not math.isfinite(factor):
        raise ValueError(f"inv_scale must be finite, got {inv_scale!r}")
    return bool(_core.unscale(array_list, factor, names))


class LossScaler:
    """Dynamic loss scaling (torch.amp.GradScaler's rule).

    scale(loss) = loss * scale. After each step, update(found_inf):
    an overflow multiplies the scale by backoff_factor and restarts the count;
    growth_interval steps in a row without one multiply it by growth_factor.
    """

    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000):
        if not (init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale must be a finite number > 0, got {init_scale!r}")
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if not (isinstance(growth_interval, int) and growth_interval > 0):
            raise ValueError(f"growth_interval must be an int > 0, got {growth_interval!r}")
        self._scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self._growth_tracker = 0

    def get_scale(self):
        return self._scale

    def scale(self, loss):
        """loss * scale (any NumPy value or array, or a Python float)."""
        return loss * self._scale

    def update(self, found_inf):
        if found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._scale *= self.growth_factor
                self._growth_tracker = 0

    def state_dict(self):
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state):
        self._scale = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self._growth_tracker = int(state["_growth_tracker"])
