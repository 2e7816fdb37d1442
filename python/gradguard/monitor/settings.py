"""The monitor's settings: every threshold named once, with its default, its
rule and its meaning (GradientMonitor's signature and docstring are read
from here)."""

from __future__ import annotations

from dataclasses import dataclass

from .._settings import Settings, integer, number, setting

__all__ = ["MonitorSettings"]

_NON_NEGATIVE = number(low=0.0, allow_inf=False)


@dataclass(frozen=True)
class MonitorSettings(Settings):
    window: int = setting(256, integer(2), "steps of history kept (memory independent of run length)")
    patience: int = setting(5, integer(1), "consecutive steps a vanishing / dead / update-ratio condition must hold")
    vanishing_floor: float = setting(1e-10, _NON_NEGATIVE, "vanishing: norm below this outright")
    vanishing_ratio: float = setting(1e-4, _NON_NEGATIVE, "vanishing: or this far below the step's median layer")
    decay_ratio: float = setting(1e-3, _NON_NEGATIVE, "vanishing: or this far below the layer's own median history")
    explode_ratio: float = setting(
        1e4, _NON_NEGATIVE, "exploding at once: a norm above explode_floor and this times the median plausible layer"
    )
    explode_floor: float = setting(
        1e3, _NON_NEGATIVE, "layers at or below this are the plausible ones the median is taken over"
    )
    spike_z: float = setting(
        8.0,
        number(low=0.0),
        "exploding: robust z-score of log(norm) against the layer's history (median, 1.4826 MAD >= 0.3)",
    )
    min_history: int = setting(20, integer(2), "steps of history before the z-score and decay tests apply")
    growth_factor: float = setting(2.0, _NON_NEGATIVE, "exploding: norm growing by this factor ...")
    growth_steps: int = setting(5, integer(1), "... this many steps in a row ...")
    growth_over_history: float = setting(
        10.0, _NON_NEGATIVE, "... and (once there is history) above this times the layer's history median"
    )
    sustained_growth: float = setting(
        10.0,
        _NON_NEGATIVE,
        "exploding: norm above this times the layer's long-run level (the lowest median its kept window "
        "has had, once that holds reference_history steps) for patience steps: growth too slow to look like a spike",
    )
    sustained_steps: int = setting(16, integer(1), "... the median over this many recent steps is what is compared")
    reference_history: int = setting(
        64, integer(2), "steps of a layer's own history before its long-run level is taken (warm-up is not a level)"
    )
    loss_spike_z: float = setting(
        6.0,
        number(low=0.0),
        "loss_spike: the loss's robust z-score (of log loss when the losses are positive) against its last "
        "loss_window steps above this: level the median of the last 16, noise from step-to-step differences "
        "(1.4826 MAD / sqrt 2, at least 0.05 in log) ...",
    )
    loss_rise: float = setting(
        1.0,
        _NON_NEGATIVE,
        "... and above its window's median by this fraction of |median| (1: twice the median, llm-foundry's rule)",
    )
    loss_window: int = setting(128, integer(2), "steps of loss history the loss spike is judged against")
    dead_fraction: float = setting(
        1.0, _NON_NEGATIVE, "dead: this fraction of the gradient exactly zero (1.0: the whole layer)"
    )
    update_ratio_high: float = setting(0.1, _NON_NEGATIVE, "update ratio ||w_new - w_old|| / ||w_new|| above this")
    update_ratio_low: float = setting(1e-7, _NON_NEGATIVE, "... or below this (needs step_report=)")
    baseline_refresh: int = setting(16, integer(1), "steps between recomputations of each layer's median and MAD")
    max_findings: int = setting(10000, integer(0), "findings (and guard actions) kept; later ones are returned only")

    def check_together(self):
        if self.min_history > self.window:
            raise ValueError(f"min_history ({self.min_history}) must not exceed window ({self.window})")
