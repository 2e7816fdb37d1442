"""The monitor's memory: the last `window` steps of each layer's series in a
ring, and each layer's robust baseline of its log norm."""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["SERIES", "TOTALS", "History", "Baseline", "clipped"]

# The series kept per step and layer.
SERIES = ("norm", "abs_mean", "std", "zero_fraction", "update_ratio")
# The series kept per step for the whole model: the global L2 norm of the
# gradients the monitor was given, the norm after the step's clip (NaN where
# the caller did not say what its clip did), and the loss (NaN where not given).
TOTALS = ("grad_norm", "norm_after_clip", "loss")
# The least robust spread of a layer's log norm: a history with a MAD near 0
# (two alternating levels, a plateau) must not turn ordinary jumps into spikes.
MIN_SPREAD = 0.3


def nanmedian_columns(values: np.ndarray) -> np.ndarray:
    """np.nanmedian(values, axis=0) of a steps x layers array, exactly: per
    column the middle of its n non-NaN values once sorted, or (a + b) / 2 of
    the two middle ones when n is even; NaN where n = 0 (without a warning).
    NumPy takes masked arrays for columns under 600 long, which cost tens of
    milliseconds a call on thousands of layers; one sort costs a few."""
    if values.shape[0] == 0:
        return np.full(values.shape[1], np.nan)
    count = values.shape[0] - np.count_nonzero(np.isnan(values), axis=0)
    ordered = np.sort(values, axis=0)  # NaN last
    low, high = np.maximum(count - 1, 0) // 2, count // 2
    below = np.take_along_axis(ordered, low[None, :], axis=0)[0]
    above = np.take_along_axis(ordered, high[None, :], axis=0)[0]
    middle = np.where(low == high, below, (below + above) / 2)
    return np.where(count > 0, middle, np.nan)


class Baseline:
    """Per layer, over the kept norms: count of positive finite norms, median of
    log norm (center) and robust spread max(1.4826 MAD, MIN_SPREAD)."""

    def __init__(self, count, center, spread):
        self.count, self.center, self.spread = count, center, spread


class History:
    """A ring of `window` steps x `layers` values per series, oldest overwritten first."""

    def __init__(self, window: int, layers: int, baseline_refresh: int, min_history: int = 1):
        self.window = window
        self.steps = np.full(window, -1, dtype=np.int64)
        self.series = {name: np.full((window, layers), np.nan) for name in SERIES}
        self.totals = {name: np.full(window, np.nan) for name in TOTALS}
        self.count = 0  # steps recorded, ever
        self._baseline: Optional[Baseline] = None
        self._baseline_age = 0
        self._baseline_refresh = baseline_refresh
        # A baseline taken over fewer steps than the detectors need is taken again at
        # the next step: otherwise, cached until the next refresh, it would keep the
        # z-score test off for up to baseline_refresh steps after min_history is reached.
        self._min_history = min_history
        self._baseline_kept = 0  # steps the cached baseline was taken over

    def add_layers(self, count: int) -> None:
        """Layers joining at the next step: NaN before it, no baseline until their own history has min_history steps."""
        for name in SERIES:
            self.series[name] = np.concatenate([self.series[name], np.full((self.window, count), np.nan)], axis=1)
        if self._baseline is not None:
            baseline = self._baseline
            self._baseline = Baseline(
                np.concatenate([baseline.count, np.zeros(count, dtype=baseline.count.dtype)]),
                np.concatenate([baseline.center, np.full(count, np.nan)]),
                np.concatenate([baseline.spread, np.full(count, MIN_SPREAD)]),
            )

    def _kept(self):
        """Ring rows of the kept steps, oldest first."""
        kept = min(self.count, self.window)
        return [(self.count - kept + i) % self.window for i in range(kept)]

    def last_row(self) -> Optional[int]:
        return (self.count - 1) % self.window if self.count else None

    def previous_norm(self) -> Optional[np.ndarray]:
        """The last recorded step's norms (a copy), or None before any step."""
        row = self.last_row()
        return None if row is None else self.series["norm"][row].copy()

    def previous_totals(self, name: str, count: int) -> np.ndarray:
        """The last `count` kept values of a total before the step being recorded (oldest first)."""
        return self.totals[name][self._kept()[-count:]]

    def recent_rows(self, name: str, count: int) -> np.ndarray:
        """The last `count` kept steps x layers of a series (oldest first), with their steps."""
        rows = self._kept()[-count:]
        return self.steps[rows], self.series[name][rows]

    def recent_norm(self, layers, count: int) -> np.ndarray:
        """Per layer (indices), the median of its positive finite norms over the last
        `count` kept steps (NaN where it has none)."""
        rows = self._kept()[-count:]
        norms = self.series["norm"][np.ix_(rows, layers)]
        return nanmedian_columns(np.where(np.isfinite(norms) & (norms > 0), norms, np.nan))

    def append(self, step: int, values: dict) -> None:
        row = self.count % self.window
        for name in SERIES:
            self.series[name][row] = values[name]
        for name in TOTALS:
            self.totals[name][row] = values[name]
        self.steps[row] = step
        self.count += 1

    def as_dict(self, layers) -> dict:
        """The kept window: 'step' (steps,), 'layers', steps x layers arrays per
        series and (steps,) arrays per total; oldest first."""
        order = self._kept()
        result = {"step": self.steps[order].copy(), "layers": list(layers)}
        for name in SERIES:
            result[name] = self.series[name][order].copy()
        for name in TOTALS:
            result[name] = self.totals[name][order].copy()
        return result

    def clip_rate(self) -> float:
        """The fraction of the kept steps whose clip is known that were clipped
        (NaN when no kept step's clip is known)."""
        order = self._kept()
        before, after = self.totals["grad_norm"][order], self.totals["norm_after_clip"][order]
        known = ~np.isnan(after)
        return float(np.mean(clipped(before[known], after[known]))) if known.any() else float("nan")

    def baseline(self) -> Baseline:
        """The layers' baseline over the kept norms before this step, recomputed every
        baseline_refresh steps (and at every step until it covers min_history steps)."""
        cached_enough = self._baseline_kept >= min(self._min_history, self.window)
        if self._baseline is not None and self._baseline_age < self._baseline_refresh and cached_enough:
            self._baseline_age += 1
            return self._baseline
        order = self._kept()
        norms = self.series["norm"][order]
        layers = norms.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(np.isfinite(norms) & (norms > 0), np.log(norms), np.nan)
        count = np.sum(np.isfinite(logs), axis=0)
        if order and count.any():
            center = nanmedian_columns(logs)  # NaN for a layer with no history yet
            spread = np.maximum(1.4826 * nanmedian_columns(np.abs(logs - center)), MIN_SPREAD)
        else:
            center = np.full(layers, np.nan)
            spread = np.full(layers, MIN_SPREAD)
        self._baseline = Baseline(count, center, spread)
        self._baseline_age = 1
        self._baseline_kept = len(order)
        return self._baseline


# A norm after the clip this much below the norm before is a clip: two float64
# readings of the same unclipped gradients (before the clip and after it) may
# differ in their last bits, a clip scales by 1 - 1e-6 / max_norm or less.
CLIPPED_BELOW = 1.0 - 1e-9


def clipped(before, after):
    """Whether a clip scaled the gradients: the norm after it is below the norm
    before (by more than rounding); a non-finite step is not clipped, it is broken."""
    return np.isfinite(before) & (np.asarray(after) < np.asarray(before) * CLIPPED_BELOW)


def empty_history(layers) -> dict:
    """GradientMonitor.history() before any step."""
    result = {"step": np.full(0, -1, dtype=np.int64), "layers": list(layers)}
    for name in SERIES:
        result[name] = np.empty((0, 0))
    for name in TOTALS:
        result[name] = np.empty(0)
    return result
