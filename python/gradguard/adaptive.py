"""Adaptive gradient clipping: the threshold follows the run's own gradient norms.

Both clippers take the call shape of gg.clip_by_global_norm (arrays in,
scaled in place) and return (norm before clipping, threshold used). The norm
is one read of the gradients; the scale, when needed, one read+write.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from . import _core
from ._arguments import Arrays, as_array_list, positive_int, real, state_entries
from .clip import clip_with_norm_

__all__ = ["AutoClip", "ZClip"]


def _norm_for_clipping(arrays):
    """(arrays as a list or dict, global L2 norm): the arrays are checked as for
    an in-place call first, so a clipper refuses bad input before it changes its state."""
    array_list, names = as_array_list(arrays)
    norm, _ = _core.global_norm(array_list, 2.0, names, True)
    return (dict(zip(names, array_list)) if names is not None else array_list), norm


def _finite_norms(values, argument):
    """values as a 1-D float64 array of finite norms >= 0 (from a state dict)."""
    try:
        norms = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a 1-D sequence of norms, got {type(values).__name__}") from None
    if norms.ndim != 1 or not np.all(np.isfinite(norms)) or np.any(norms < 0):
        raise ValueError(f"{argument} must be a 1-D sequence of finite norms >= 0")
    return norms


class AutoClip:
    """AutoClip (Seetharaman et al., 2020): clip at the p-th percentile of the
    gradient norms seen so far, the current one included.

        norms.append(||g||);  threshold = percentile(norms, p);  clip_by_global_norm(g, threshold)

    history=None keeps every norm (8 bytes a step); an int keeps the last
    `history` norms (bounded memory).
    """

    def __init__(self, percentile=10.0, history=None):
        self.percentile, self.history = self._checked(percentile, history)
        self._norms = deque(maxlen=self.history)

    @staticmethod
    def _checked(percentile, history):
        return (
            real(percentile, "percentile", low=0.0, high=100.0),
            None if history is None else positive_int(history, "history"),
        )

    def __call__(self, arrays: Arrays) -> tuple:
        arrays, norm = _norm_for_clipping(arrays)
        threshold = self.observe(norm)
        if math.isfinite(threshold):
            # clip_by_global_norm(g, threshold)'s rule: coef = threshold / (norm + CLIP_EPS), applied when below 1.
            clip_with_norm_(arrays, threshold, norm)
        return norm, threshold

    def observe(self, norm: float) -> float:
        """Record a step's global norm (non-finite ones are not recorded) and return
        the threshold to clip it at (inf before any finite norm): the state update of
        __call__ without touching arrays, for a caller that clips elsewhere (gg.Guard,
        an optimiser's max_grad_norm)."""
        if math.isfinite(norm):
            self._norms.append(float(norm))
        if not self._norms:
            return math.inf
        return float(np.percentile(np.fromiter(self._norms, float), self.percentile))

    def state_dict(self):
        return {"percentile": self.percentile, "history": self.history, "norms": np.fromiter(self._norms, float)}

    def load_state_dict(self, state):
        """Restore a state_dict(); validated first, nothing changes unless all of it is valid."""
        state = state_entries(state, "AutoClip", ("percentile", "history", "norms"))
        percentile, history = self._checked(state["percentile"], state["history"])
        norms = _finite_norms(state["norms"], "norms")
        self.percentile, self.history = percentile, history
        self._norms = deque((float(x) for x in norms), maxlen=history)


class ZClip:
    """ZClip (Kumar et al., 2025): z-score clipping against EMA statistics of the norm.

    The first warmup_steps norms set mean = average and var = population
    variance (meanwhile gradients are clipped at max_grad_norm, if given). Then,
    with z = (g - mean) / (sqrt(var) + eps):

        threshold = mean + z_thresh * std / (z / z_thresh)   when z > z_thresh (a spike)
        clip at min(threshold, max_grad_norm)                 (threshold = g otherwise)
        mean = alpha mean + (1 - alpha) x;  var = alpha var + (1 - alpha) (x - mean)^2

    where x is the clipped norm on a spike and g otherwise (the variance uses the
    updated mean, as the authors' code does).
    """

    def __init__(self, alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25):
        (self.alpha, self.z_thresh, self.max_grad_norm, self.eps, self.warmup_steps) = self._checked(
            alpha, z_thresh, max_grad_norm, eps, warmup_steps
        )
        self._warmup = []
        self.mean = None
        self.var = None

    @staticmethod
    def _checked(alpha, z_thresh, max_grad_norm, eps, warmup_steps):
        return (
            real(alpha, "alpha", low=0.0, high=1.0, low_open=True, high_open=True),
            real(z_thresh, "z_thresh", low=0.0, low_open=True, allow_inf=False),
            real(max_grad_norm, "max_grad_norm", low=0.0, allow_none=True),
            real(eps, "eps", low=0.0, allow_inf=False),
            positive_int(warmup_steps, "warmup_steps"),
        )

    def __call__(self, arrays: Arrays) -> tuple:
        arrays, norm = _norm_for_clipping(arrays)
        threshold = self.observe(norm)
        self._clip(arrays, norm, threshold)
        return norm, threshold

    def observe(self, norm: float) -> float:
        """Record a step's global norm and return the threshold to clip it at: the
        state update of __call__ without touching arrays, for a caller that clips
        elsewhere (gg.Guard, an optimiser's max_grad_norm). A non-finite norm (an
        fp16 overflow, one NaN batch) is not recorded, as AutoClip does: it would
        make the mean and variance NaN for good. Its threshold is the spike
        boundary mean + z_thresh * std (max_grad_norm while warming up)."""
        cap = math.inf if self.max_grad_norm is None else self.max_grad_norm
        if not math.isfinite(norm):
            if self.mean is None:
                return cap
            return min(self.mean + self.z_thresh * math.sqrt(self.var), cap)
        if self.mean is None:
            self._warmup.append(norm)
            if len(self._warmup) >= self.warmup_steps:
                values = np.asarray(self._warmup, dtype=np.float64)
                self.mean, self.var = float(values.mean()), float(values.var())
                self._warmup = []
            return cap
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + self.eps)
        spike = z > self.z_thresh
        adaptive = self.mean + self.z_thresh * std / (z / self.z_thresh) if spike else norm
        observed = adaptive if spike else norm
        self.mean = self.alpha * self.mean + (1 - self.alpha) * observed
        self.var = self.alpha * self.var + (1 - self.alpha) * (observed - self.mean) ** 2
        return min(adaptive, cap)

    @staticmethod
    def _clip(arrays, norm, threshold):
        """Scale by threshold / (norm + CLIP_EPS) when norm > threshold (the ZClip authors'
        rule: a norm at the threshold costs no write pass)."""
        if norm > threshold:
            clip_with_norm_(arrays, threshold, norm)

    def state_dict(self):
        return {
            "alpha": self.alpha,
            "z_thresh": self.z_thresh,
            "max_grad_norm": self.max_grad_norm,
            "eps": self.eps,
            "warmup_steps": self.warmup_steps,
            "warmup": np.asarray(self._warmup, float),
            "mean": self.mean,
            "var": self.var,
        }

    def load_state_dict(self, state):
        """Restore a state_dict(); validated first, nothing changes unless all of it is valid."""
        state = state_entries(
            state, "ZClip", ("alpha", "z_thresh", "max_grad_norm", "eps", "warmup_steps", "warmup", "mean", "var")
        )
        settings = self._checked(
            state["alpha"], state["z_thresh"], state["max_grad_norm"], state["eps"], state["warmup_steps"]
        )
        warmup = [float(x) for x in _finite_norms(state["warmup"], "warmup")]
        if len(warmup) >= settings[-1]:
            raise ValueError(f"warmup holds {len(warmup)} norms; a warm-up of {settings[-1]} steps keeps fewer")
        mean = real(state["mean"], "mean", allow_none=True)
        var = real(state["var"], "var", low=0.0, allow_none=True)
        if (mean is None) != (var is None):
            raise ValueError("mean and var are both None (still warming up) or both numbers")
        if mean is not None and warmup:
            raise ValueError("warmup holds norms, but mean and var are set: the warm-up is over")
        (self.alpha, self.z_thresh, self.max_grad_norm, self.eps, self.warmup_steps) = settings
        self._warmup, self.mean, self.var = warmup, mean, var
