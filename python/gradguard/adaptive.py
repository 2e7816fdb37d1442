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
from ._arguments import as_array_list

__all__ = ["AutoClip", "ZClip"]


def _clip_to(array_list, names, norm, threshold):
    """Scale by threshold / (norm + 1e-6) when norm > threshold (the ZClip authors'
    rule; unlike torch's, a norm at the threshold costs no write pass)."""
    if norm > threshold:
        _core.scale(array_list, threshold / (norm + 1e-6), names)


class AutoClip:
    """AutoClip (Seetharaman et al., 2020): clip at the p-th percentile of the
    gradient norms seen so far, the current one included.

        norms.append(||g||);  threshold = percentile(norms, p);  clip_by_global_norm(g, threshold)

    history=None keeps every norm (8 bytes a step); an int keeps the last
    `history` norms (bounded memory).
    """

    def __init__(self, percentile=10.0, history=None):
        if not 0.0 <= float(percentile) <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
        if history is not None and (not isinstance(history, int) or history < 1):
            raise ValueError(f"history must be None or an int >= 1, got {history!r}")
        self.percentile = float(percentile)
        self.history = history
        self._norms = deque(maxlen=history)

    def __call__(self, arrays):
        array_list, names = as_array_list(arrays)
        norm, _ = _core.global_norm(array_list, 2.0, names)
        if math.isfinite(norm):
            self._norms.append(norm)
        if not self._norms:
            return norm, math.inf
        threshold = float(np.percentile(np.fromiter(self._norms, float), self.percentile))
        _clip_to(array_list, names, norm, threshold)
        return norm, threshold

    def state_dict(self):
        return {"percentile": self.percentile, "history": self.history, "norms": np.fromiter(self._norms, float)}

    def load_state_dict(self, state):
        self.percentile = float(state["percentile"])
        self.history = state["history"]
        self._norms = deque((float(x) for x in state["norms"]), maxlen=self.history)


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
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        if not z_thresh > 0:
            raise ValueError(f"z_thresh must be > 0, got {z_thresh!r}")
        if max_grad_norm is not None and not max_grad_norm >= 0:
            raise ValueError(f"max_grad_norm must be >= 0 or None, got {max_grad_norm!r}")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.alpha, self.z_thresh, self.max_grad_norm, self.eps = float(alpha), float(z_thresh), max_grad_norm, float(eps)
        self.warmup_steps = warmup_steps
        self._warmup = []
        self.mean = None
        self.var = None

    def __call__(self, arrays):
        array_list, names = as_array_list(arrays)
        norm, _ = _core.global_norm(array_list, 2.0, names)
        cap = math.inf if self.max_grad_norm is None else float(self.max_grad_norm)
        if self.mean is None:
            self._warmup.append(norm)
            if len(self._warmup) >= self.warmup_steps:
                values = np.asarray(self._warmup, dtype=np.float64)
                self.mean, self.var = float(values.mean()), float(values.var())
                self._warmup = []
            _clip_to(array_list, names, norm, cap)
            return norm, cap
        std = math.sqrt(self.var)
        z = (norm - self.mean) / (std + self.eps)
        spike = z > self.z_thresh
        adaptive = self.mean + self.z_thresh * std / (z / self.z_thresh) if spike else norm
        threshold = min(adaptive, cap)
        _clip_to(array_list, names, norm, threshold)
        observed = adaptive if spike else norm
        self.mean = self.alpha * self.mean + (1 - self.alpha) * observed
        self.var = self.alpha * self.var + (1 - self.alpha) * (observed - self.mean) ** 2
        return norm, threshold

    def state_dict(self):
        return {"alpha": self.alpha, "z_thresh": self.z_thresh, "max_grad_norm": self.max_grad_norm, "eps": self.eps,
                "warmup_steps": self.warmup_steps, "warmup": np.asarray(self._warmup, float),
                "mean": self.mean, "var": self.var}

    def load_state_dict(self, state):
        self.alpha, self.z_thresh, self.max_grad_norm = state["alpha"], state["z_thresh"], state["max_grad_norm"]
        self.eps, self.warmup_steps = state["eps"], state["warmup_steps"]
        self._warmup = [float(x) for x in state["warmup"]]
        self.mean, self.var = state["mean"], state["var"]
