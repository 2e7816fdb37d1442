"""GradientMonitor: per-layer detection of vanishing, exploding and dead gradients.

Each update reads the gradients once (gg.grad_stats), keeps a bounded history
(the last `window` steps), and returns that step's findings: each a layer, a
kind, the step, the numbers behind it and one readable line. A condition is
reported when it starts (with the step its streak began) and again only after
it has cleared.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ._arguments import Arrays, as_array_list, in_order_of, positive_int, real
from .stats import STATS_FIELDS as _STAT_FIELDS
from .stats import GradStats, stats_of

__all__ = ["GradientMonitor", "Finding"]

_SERIES = ("norm", "abs_mean", "std", "zero_fraction", "update_ratio")
_STATE_COUNTERS = (
    "vanishing_streak",
    "vanishing_since",
    "vanishing_clear",
    "dead_streak",
    "dead_since",
    "dead_clear",
    "ratio_streak",
    "ratio_since",
    "ratio_clear",
    "growth_streak",
)
# The least robust spread of a layer's log norm: a history with a MAD near 0
# (two alternating levels, a plateau) must not turn ordinary jumps into spikes.
_MIN_SPREAD = 0.3
# Weights whose root mean square is below this count as zero for the update ratio.
_NEAR_ZERO_RMS = 1e-8
_REMEDIES = {
    "exploding": "clip the global norm (or use AutoClip/ZClip) or lower the learning rate",
    "vanishing": "add residual connections or normalisation, or use an initialisation suited to the activation",
    "dead": "use a leaky activation or a lower learning rate",
    "update_ratio": "adjust this layer's learning rate",
}


@dataclass(frozen=True)
class Finding:
    step: int
    layer: str
    kind: str  # "vanishing", "exploding", "dead", "update_ratio"
    evidence: dict = field(default_factory=dict)
    message: str = ""


# The kept series that latest() and log_to() publish, and their tag prefixes.
_LOGGED = (
    ("norm", "grad_norm"),
    ("abs_mean", "grad_abs_mean"),
    ("std", "grad_std"),
    ("zero_fraction", "grad_zero_fraction"),
    ("update_ratio", "update_ratio"),
)


@dataclass(frozen=True)
class _StepView:
    """One step's per-layer arrays, as the detectors read them."""

    step: int
    norm: np.ndarray
    finite: np.ndarray
    positive: np.ndarray
    logs: np.ndarray
    zero_fraction: np.ndarray
    ratio: np.ndarray
    stats: object
    previous: object  # the previous step's norms, or None
    center: np.ndarray  # median log norm of each layer's history
    spread: np.ndarray  # robust spread of it
    has_history: np.ndarray
    present: np.ndarray  # layers with a gradient this step


def _spread_out(stats, present, names):
    """GradStats of the present layers laid out over all of them: NaN moments and
    zero counts where a layer is absent."""
    fields = {}
    for key in _STAT_FIELDS:
        values = getattr(stats, key)
        full = (
            np.zeros(len(present), dtype=values.dtype) if values.dtype.kind in "iu" else np.full(len(present), np.nan)
        )
        full[present] = values
        fields[key] = full
    return GradStats(names=tuple(names), global_norm=stats.global_norm, **fields)


class GradientMonitor:
    """Tracks per-layer gradient statistics and flags layers in trouble.

    Each condition is reported once, when it has held for `patience` steps (or
    at once for the checks that need no history), with the step its streak
    began, the numbers behind it and the remedy they point to; it is reported
    again only after it has cleared for `patience` steps. A layer gets one
    finding per cause: exploding outranks dead, dead outranks vanishing, and
    either outranks an update-ratio finding.

    Defaults (all keyword arguments, all documented in findings' evidence):
      window=256        steps of history kept (memory independent of run length)
      patience=5        consecutive steps a vanishing / dead / update-ratio condition must hold
      vanishing_floor=1e-10       norm below this is vanishing outright
      vanishing_ratio=1e-4        ... or this far below the step's median layer (4 orders)
      decay_ratio=1e-3            ... or this far below the layer's own median history
      explode_ratio=1e4, explode_floor=1e3   exploding at once, with no history needed: a norm
                        above explode_floor and explode_ratio times the median of the layers
                        at or below explode_floor (the floor keeps the healthy top of a deep
                        net whose lower layers vanish from looking "far above the median",
                        and the exploding layers out of the median they are compared with)
      spike_z=8.0       exploding: robust z-score of log(norm) against the layer's history
                        (median and 1.4826 x MAD of the kept window, at least 0.3: a
                        norm that flips between two levels has a MAD near 0, and a jump
                        must be more than ~11x its median to count as a spike)
      min_history=20    steps of history before the z-score and decay tests apply
      growth_factor=2.0, growth_steps=5   exploding: norm at least doubling 5 steps in a row, and
                        (once there is history) above growth_over_history=10 times the
                        layer's history median: a tiny gradient recovering near convergence
                        is not an explosion
      dead_fraction=1.0 dead: this fraction of the gradient exactly zero (1.0: the whole
                        layer, as a layer behind dead units gets; a sparse embedding whose
                        untouched rows are zero is not dead)
      update_ratio_high=0.1, update_ratio_low=1e-7   bounds of ||w_new - w_old|| / ||w_new||,
                        the update actually applied: given by `step_report=` (gg.optim's
                        StepReport); without it the rule is off. Vectors (biases, norm
                        gains) and all-zero weights are not judged.
      baseline_refresh=16   steps between recomputations of each layer's history median and MAD
    Non-finite gradients are reported as exploding at once. The detectors run on
    NumPy arrays over all layers; only layers with something to report cost Python time.
    """

    def __init__(
        self,
        names=None,
        window=256,
        *,
        patience=5,
        vanishing_floor=1e-10,
        vanishing_ratio=1e-4,
        decay_ratio=1e-3,
        explode_ratio=1e4,
        explode_floor=1e3,
        spike_z=8.0,
        min_history=20,
        growth_factor=2.0,
        growth_steps=5,
        growth_over_history=10.0,
        dead_fraction=1.0,
        update_ratio_high=0.1,
        update_ratio_low=1e-7,
        baseline_refresh=16,
        max_findings=10000,
    ):
        window, patience = positive_int(window, "window", 2), positive_int(patience, "patience")
        min_history, growth_steps = (
            positive_int(min_history, "min_history", 2),
            positive_int(growth_steps, "growth_steps"),
        )
        baseline_refresh, max_findings = (
            positive_int(baseline_refresh, "baseline_refresh"),
            positive_int(max_findings, "max_findings", 0),
        )
        if min_history > window:
            raise ValueError(f"min_history ({min_history}) must not exceed window ({window})")
        (
            vanishing_floor,
            vanishing_ratio,
            decay_ratio,
            explode_ratio,
            explode_floor,
            spike_z,
            growth_factor,
            growth_over_history,
            dead_fraction,
            update_ratio_high,
            update_ratio_low,
        ) = (
            real(value, name, low=0.0, allow_inf=name == "spike_z")
            for name, value in (
                ("vanishing_floor", vanishing_floor),
                ("vanishing_ratio", vanishing_ratio),
                ("decay_ratio", decay_ratio),
                ("explode_ratio", explode_ratio),
                ("explode_floor", explode_floor),
                ("spike_z", spike_z),
                ("growth_factor", growth_factor),
                ("growth_over_history", growth_over_history),
                ("dead_fraction", dead_fraction),
                ("update_ratio_high", update_ratio_high),
                ("update_ratio_low", update_ratio_low),
            )
        )
        self.names = None if names is None else [str(n) for n in names]
        self._named = names is not None  # whether layers have real names, so that dicts match by them
        self.window = int(window)
        self.settings = dict(
            patience=patience,
            vanishing_floor=vanishing_floor,
            vanishing_ratio=vanishing_ratio,
            decay_ratio=decay_ratio,
            explode_ratio=explode_ratio,
            explode_floor=explode_floor,
            spike_z=spike_z,
            min_history=min_history,
            growth_factor=growth_factor,
            growth_steps=growth_steps,
            growth_over_history=growth_over_history,
            dead_fraction=dead_fraction,
            update_ratio_high=update_ratio_high,
            update_ratio_low=update_ratio_low,
        )
        self.max_findings = max_findings
        self.baseline_refresh = int(baseline_refresh)
        self.findings = []
        self.actions = []  # what a gg.Guard did, for the report (bounded like the findings)
        self._logged_findings = 0  # findings already written by log_to
        self._baseline = None
        self._baseline_age = 0
        self._steps = np.full(self.window, -1, dtype=np.int64)
        self._series = None
        self._states = None
        self._count = 0
        self._last_step = -1

    # -- updating -------------------------------------------------------------------------
    def update(
        self,
        grads: Arrays,
        params: Optional[Arrays] = None,
        step: Optional[int] = None,
        *,
        step_report=None,
        allow_missing: bool = False,
    ) -> list:
        """Record one step's gradients and return its findings.

        grads: a dict name -> array, or a list. Once the monitor knows its
        layers' names (from `names=` or a first dict), a dict is matched by
        name (different key sets raise a ValueError naming the missing and
        unexpected layers); a list pairs by position. params is accepted (and
        matched the same way) for compatibility; the update-ratio rule needs
        the update actually applied, which `step_report=` gives: the
        StepReport of a gg.optim step (`step(..., return_report=True)`) over
        these layers, matched by name when both sides have names, else by
        position. A refused update changes nothing.

        allow_missing: a dict may leave out some of the monitor's layers (a
        frozen layer, an unused branch: a parameter without a gradient this
        step). Their statistics are NaN for the step, nothing is detected on
        them, and a streak they were on starts again. Names the monitor does
        not know are still refused.
        """
        array_list, names = as_array_list(grads, "grads")
        labels, order, subset, present = self._matched(names, len(array_list), allow_missing, "gradients", "grads")
        array_list = [array_list[index] for index in order]
        stats = stats_of(array_list, subset, "grads")
        if present is not None:
            stats = _spread_out(stats, present, labels)
            slots, empty = iter(array_list), np.empty(0)
            array_list = [next(slots) if here else empty for here in present]
        step = self._last_step + 1 if step is None else int(step)
        if params is not None:
            param_list, param_names = as_array_list(params, "params")
            param_list = in_order_of(
                subset if (self._named or names is not None) else None, param_list, param_names, "params"
            )
            if len(param_list) != (len(array_list) if present is None else len(subset)):
                raise ValueError(f"{len(param_list)} params for {len(subset)} gradients")
        layer_names = labels if labels is not None else [str(i) for i in range(len(array_list))]
        ratio = self._update_ratios(step_report, layer_names, array_list)
        return self._record(stats, step, ratio, present, layer_names, names is not None)

    def update_stats(self, stats: GradStats, step: Optional[int] = None, *, allow_missing: bool = False) -> list:
        """Record one step from statistics already taken (gg.grad_stats, or
        combined over ranks by gradguard.distributed.grad_stats) and return its
        findings: one read of the gradients can serve the norm, the clip and
        the monitor. Layers are matched by name as in update (a GradStats
        without names pairs by position). The update-ratio rule is not applied:
        it needs the update itself (update(..., step_report=)). allow_missing
        as in update: named statistics may leave out some of the monitor's layers.
        """
        if not isinstance(stats, GradStats):
            raise TypeError(f"stats must be a GradStats (from gg.grad_stats), not {type(stats).__name__}")
        names = list(stats.names) if stats.names is not None else None
        labels, order, subset, present = self._matched(names, len(stats), allow_missing, "layers' statistics", "stats")
        fields = {key: getattr(stats, key)[order] for key in _STAT_FIELDS}
        subset = tuple(subset) if subset is not None else None
        stats = GradStats(names=subset, global_norm=stats.global_norm, **fields)
        if present is not None:
            stats = _spread_out(stats, present, labels)
        step = self._last_step + 1 if step is None else int(step)
        layer_names = labels if labels is not None else [str(i) for i in range(len(stats))]
        return self._record(stats, step, np.full(len(stats), np.nan), present, layer_names, names is not None)

    def _matched(self, names, count, allow_missing, noun, argument):
        """How one step's entries (named, or by position) map onto the layers:
        (labels, order, subset, present). Entry order[i] is layer subset[i];
        labels are all the layers' names (None before the first step of an
        unnamed monitor); present marks the layers given (None: all of them)."""
        known = self.names if self._series is not None or self.names is not None else None
        labels = known if known is not None else names
        if labels is not None and len(labels) != count and names is None:
            raise ValueError(f"{count} {noun}; this monitor tracks {len(labels)} layers")
        indices = list(range(count))
        if allow_missing and self._named and names is not None and len(names) < len(known):
            given = set(names)
            present = np.array([name in given for name in known], dtype=bool)
            subset = [name for name in known if name in given]
            return labels, in_order_of(subset, indices, names, argument), subset, present
        return labels, in_order_of(known if self._named else None, indices, names, argument), labels, None

    def _record(self, stats, step, ratio, present, layer_names, named):
        """Append one step's series and run the detectors (both update paths end here)."""
        if self._series is None:
            self.names = layer_names
            self._named = self._named or named
            self._series = {name: np.full((self.window, len(self.names)), np.nan) for name in _SERIES}
            layers = len(self.names)
            self._states = {name: np.zeros(layers, dtype=np.int64) for name in _STATE_COUNTERS}
            for flag in ("exploding", "vanishing_reported", "dead_reported", "ratio_reported"):
                self._states[flag] = np.zeros(layers, dtype=bool)
        numel = np.maximum(stats.numel, 1)
        norm = np.where((stats.n_nan + stats.n_inf) > 0, np.nan, stats.l2)
        row = self._count % self.window
        previous = self._series["norm"][(self._count - 1) % self.window].copy() if self._count else None
        baseline = self._current_baseline()
        values = {
            "norm": norm,
            "abs_mean": stats.abs_mean,
            "std": stats.std,
            "zero_fraction": stats.n_zero / numel,
            "update_ratio": ratio,
        }
        for name in _SERIES:
            self._series[name][row] = values[name]
        self._steps[row] = step
        self._count += 1
        self._last_step = step
        new = self._detect(step, norm, values["zero_fraction"], ratio, stats, previous, baseline, present)
        room = self.max_findings - len(self.findings)
        self.findings.extend(new[: max(room, 0)])
        return new

    @staticmethod
    def _update_ratios(step_report, layer_names, array_list):
        """||w_new - w_old|| / ||w_new|| per layer from a StepReport (NaN where unknown,
        for vectors, and for all-zero weights)."""
        ratio = np.full(len(array_list), np.nan)
        if step_report is None or getattr(step_report, "update_norms", None) is None:
            return ratio
        update, weight = np.asarray(step_report.update_norms), np.asarray(step_report.param_norms)
        report_names = getattr(step_report, "names", None)
        if report_names is not None and list(report_names) != list(layer_names):
            position = {name: index for index, name in enumerate(report_names)}
            order = np.array([position.get(name, -1) for name in layer_names], dtype=np.int64)
        elif len(update) == len(array_list):
            order = np.arange(len(array_list))
        else:
            raise ValueError(
                f"step_report holds {len(update)} parameters for {len(array_list)} gradients and no names to match"
            )
        known = order >= 0
        update, weight = np.where(known, update[order], np.nan), np.where(known, weight[order], np.nan)
        # vectors (biases, norm gains and shifts) and (near-)zero weights are not judged:
        # an update relative to almost nothing says nothing about the learning rate
        matrices = np.array([np.ndim(array) >= 2 for array in array_list], dtype=bool)
        sizes = np.array([max(np.size(array), 1) for array in array_list], dtype=np.float64)
        judged = known & matrices & (weight > _NEAR_ZERO_RMS * np.sqrt(sizes))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(judged, update / weight, ratio)

    def _current_baseline(self):
        """Per layer, over the kept norms before this step: (count of positive finite
        norms, median of log norm, robust spread = max(1.4826 MAD, _MIN_SPREAD)).
        Recomputed every baseline_refresh steps."""
        if self._baseline is not None and self._baseline_age < self.baseline_refresh:
            self._baseline_age += 1
            return self._baseline
        kept = min(self._count, self.window)
        order = [(self._count - kept + i) % self.window for i in range(kept)]
        norms = self._series["norm"][order]
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(np.isfinite(norms) & (norms > 0), np.log(norms), np.nan)
        count = np.sum(np.isfinite(logs), axis=0)
        if kept and count.any():
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: layers with no history yet
                center = np.nanmedian(logs, axis=0)
                spread = np.maximum(1.4826 * np.nanmedian(np.abs(logs - center), axis=0), _MIN_SPREAD)
        else:
            center = np.full(len(self.names), np.nan)
            spread = np.full(len(self.names), _MIN_SPREAD)
        self._baseline = (count, center, spread)
        self._baseline_age = 1
        return self._baseline

    def _detect(self, step, norm, zero_fraction, ratio, stats, previous, baseline, present=None):
        """The step's findings, one detector per kind over all layers at once, in
        order of priority: a layer flagged by one is not flagged by the next.
        Layers absent this step (present False) count as finite, and their NaN
        statistics meet no condition."""
        count, center, spread = baseline
        present = np.ones(len(norm), dtype=bool) if present is None else present
        finite = np.isfinite(norm) | ~present
        positive = finite & (norm > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(positive, np.log(np.where(positive, norm, 1.0)), np.nan)
        view = _StepView(
            step,
            norm,
            finite,
            positive,
            logs,
            zero_fraction,
            ratio,
            stats,
            previous,
            center,
            spread,
            count >= self.settings["min_history"],
            present,
        )
        findings = []
        exploding = self._exploding(view, findings)
        dead = self._dead(view, findings, blocked=exploding)
        vanishing = self._vanishing(view, findings, blocked=exploding | dead, exploding=exploding)
        self._update_ratio(view, findings, blocked=exploding | dead | vanishing)
        return findings

    def _report(self, findings, step, mask, kind, evidence_of, message_of):
        for index in np.flatnonzero(mask):
            layer = self.names[index]
            evidence = dict(evidence_of(index), remedy=_REMEDIES[kind])
            message = f"{message_of(index).replace('{layer}', layer)}; remedy: {_REMEDIES[kind]}"
            findings.append(Finding(step, layer, kind, evidence, message))

    def _streak(self, condition, name, step, blocked):
        """Advance a kind's streaks; return the layers to report now: held for
        `patience` steps, not reported in this episode, not taken by a
        higher-priority finding. An episode ends after `patience` clear steps."""
        state, patience = self._states, self.settings["patience"]
        streak, since, clear = state[f"{name}_streak"], state[f"{name}_since"], state[f"{name}_clear"]
        state[f"{name}_since"] = np.where(condition & (streak == 0), step, since)
        state[f"{name}_streak"] = np.where(condition, streak + 1, 0)
        state[f"{name}_clear"] = np.where(condition, 0, clear + 1)
        reported = state[f"{name}_reported"] & (state[f"{name}_clear"] < patience)
        due = (state[f"{name}_streak"] >= patience) & ~reported & ~blocked
        state[f"{name}_reported"] = reported | due
        return due

    def _exploding(self, view, findings):
        """Non-finite values, far above the step's median layer (both from step 0),
        a spike (robust z-score of log norm) or geometric growth; each reported as
        it starts. Returns the layers exploding this step."""
        s, state, norm = self.settings, self._states, view.norm
        already = state["exploding"]
        self._report(
            findings,
            view.step,
            ~view.finite & ~already,
            "exploding",
            lambda i: {"n_nan": int(view.stats.n_nan[i]), "n_inf": int(view.stats.n_inf[i])},
            lambda i: f"{{layer}}: gradient holds NaN/inf since step {view.step}",
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            z = (view.logs - view.center) / view.spread
            spike = view.has_history & view.positive & (z > s["spike_z"])
            if view.previous is None:
                grew = np.zeros(len(norm), dtype=bool)
            else:
                grew = view.positive & (view.previous > 0) & (norm >= s["growth_factor"] * view.previous)
            # The reference is the median of the plausible layers (norm at most explode_floor):
            # layers that are themselves exploding must not drag it up.
            plausible = view.positive & (norm <= s["explode_floor"])
            median = float(np.median(norm[plausible])) if plausible.any() else np.nan
            above = view.positive & (norm > s["explode_floor"]) & (norm > s["explode_ratio"] * median)
        state["growth_streak"] = np.where(grew, state["growth_streak"] + 1, 0)
        with np.errstate(invalid="ignore", over="ignore"):
            well_above = ~view.has_history | (norm > s["growth_over_history"] * np.exp(view.center))
        growing = (state["growth_streak"] >= s["growth_steps"]) & well_above
        self._report(
            findings,
            view.step,
            above & ~already,
            "exploding",
            lambda i: {"norm": float(norm[i]), "median_layer_norm": median},
            lambda i: f"{{layer}}: norm {norm[i]:.3g} is {norm[i] / median:.3g}x the median layer's",
        )
        new_spike = spike & ~above & ~already
        self._report(
            findings,
            view.step,
            new_spike,
            "exploding",
            lambda i: {"norm": float(norm[i]), "z": float(z[i]), "median_norm": float(np.exp(view.center[i]))},
            lambda i: (
                f"{{layer}}: norm {norm[i]:.3g} is a spike, z = {z[i]:.1f} "
                f"against its median {np.exp(view.center[i]):.3g}"
            ),
        )
        self._report(
            findings,
            view.step,
            growing & ~spike & ~above & ~already,
            "exploding",
            lambda i: {"norm": float(norm[i]), "growth_steps": int(state["growth_streak"][i])},
            lambda i: (
                f"{{layer}}: norm grew x{s['growth_factor']:g} or more for "
                f"{state['growth_streak'][i]} steps, now {norm[i]:.3g}"
            ),
        )
        state["exploding"] = ~view.finite | above | spike | growing
        return state["exploding"].copy()

    def _dead(self, view, findings, blocked):
        """At least dead_fraction of the gradient exactly zero for `patience` steps running."""
        s, state, zero_fraction = self.settings, self._states, view.zero_fraction
        condition = view.finite & (zero_fraction >= s["dead_fraction"])
        due = self._streak(condition, "dead", view.step, blocked)
        self._report(
            findings,
            view.step,
            due,
            "dead",
            lambda i: {"zero_fraction": float(zero_fraction[i])},
            lambda i: (
                f"{{layer}}: {zero_fraction[i]:.0%} of its gradient is exactly 0 since step "
                f"{state['dead_since'][i]} (dead units)"
            ),
        )
        return condition

    def _vanishing(self, view, findings, blocked, exploding):
        """Below an absolute floor, far below the step's median layer (taken over the
        layers not exploding), or far below the layer's own history, for `patience` steps."""
        s, state, norm, finite = self.settings, self._states, view.norm, view.finite
        calm = finite & ~exploding & view.present
        median_layer = float(np.median(norm[calm])) if calm.any() else np.nan
        below_floor = finite & (norm < s["vanishing_floor"])
        below_median = finite & (median_layer > 0) & (norm < s["vanishing_ratio"] * median_layer)
        with np.errstate(invalid="ignore"):
            decayed = finite & view.has_history & (norm < s["decay_ratio"] * np.exp(view.center))
        condition = below_floor | below_median | decayed
        due = self._streak(condition, "vanishing", view.step, blocked)
        reasons = (("floor", below_floor), ("below median layer", below_median), ("decayed from its history", decayed))

        def reasons_of(i):
            return [name for name, flags in reasons if flags[i]]

        self._report(
            findings,
            view.step,
            due,
            "vanishing",
            lambda i: {"norm": float(norm[i]), "median_layer_norm": median_layer, "reasons": reasons_of(i)},
            lambda i: (
                f"{{layer}} is vanishing since step {state['vanishing_since'][i]}: "
                f"norm {norm[i]:.3g} ({', '.join(reasons_of(i))})"
            ),
        )
        return condition

    def _update_ratio(self, view, findings, blocked):
        """||w_new - w_old|| / ||w_new|| outside [update_ratio_low, update_ratio_high]
        for `patience` steps running (only where a StepReport gave the update)."""
        s, state, ratio = self.settings, self._states, view.ratio
        with np.errstate(invalid="ignore"):
            off = np.isfinite(ratio) & ((ratio > s["update_ratio_high"]) | (ratio < s["update_ratio_low"]))
        due = self._streak(off & view.finite, "ratio", view.step, blocked)
        self._report(
            findings,
            view.step,
            due,
            "update_ratio",
            lambda i: {"ratio": float(ratio[i])},
            lambda i: (
                f"{{layer}}: update / weight = {ratio[i]:.3g}, too "
                f"{'large' if ratio[i] > s['update_ratio_high'] else 'small'} "
                f"since step {state['ratio_since'][i]}"
            ),
        )

    def note_action(self, action) -> None:
        """Record an action taken on the run (gg.Guard calls this), shown by report()."""
        if len(self.actions) < self.max_findings:
            self.actions.append(action)

    # -- reading -------------------------------------------------------------------------
    def history(self) -> dict:
        """The kept window as NumPy arrays: 'step' (steps,), and steps x layers arrays
        'norm', 'abs_mean', 'std', 'zero_fraction', 'update_ratio'; oldest first."""
        kept = min(self._count, self.window)
        order = [(self._count - kept + i) % self.window for i in range(kept)]
        result = {"step": self._steps[order].copy(), "layers": list(self.names or [])}
        for name in _SERIES:
            result[name] = self._series[name][order].copy() if self._series is not None else np.empty((0, 0))
        return result

    def summary(self) -> dict:
        """Counts of findings per kind and the layers currently flagged."""
        kinds = {}
        for finding in self.findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        flagged = {}
        if self._states:
            patience = self.settings["patience"]
            for index, layer in enumerate(self.names):
                current = [
                    kind
                    for kind, active in (
                        ("vanishing", self._states["vanishing_streak"][index] >= patience),
                        ("exploding", bool(self._states["exploding"][index])),
                        ("dead", self._states["dead_streak"][index] >= patience),
                        ("update_ratio", self._states["ratio_streak"][index] >= patience),
                    )
                    if active
                ]
                if current:
                    flagged[layer] = current
        return {
            "steps": self._count,
            "last_step": self._last_step,
            "layers": len(self.names or []),
            "findings": kinds,
            "flagged": flagged,
        }

    def report(self) -> str:
        """A per-layer table: current norm, trend over the kept window, current findings."""
        if self._series is None:
            return "GradientMonitor: no step recorded yet"
        data = self.history()
        flagged = self.summary()["flagged"]
        width = max(12, max(len(n) for n in self.names))
        lines = [f"{'layer':<{width}}  {'norm':>10}  {'trend':>8}  findings"]
        for index, layer in enumerate(self.names):
            column = data["norm"][:, index]
            finite = column[np.isfinite(column) & (column > 0)]
            current = column[-1]
            trend = ""
            if finite.size >= 4:
                half = finite.size // 2
                change = np.log10(np.median(finite[half:]) / np.median(finite[:half]))
                trend = f"{change:+.1f} dec"
            lines.append(f"{layer:<{width}}  {current:>10.3g}  {trend:>8}  {', '.join(flagged.get(layer, [])) or '-'}")
        if self.actions:
            lines.append("")
            lines.append("actions taken:")
            lines.extend(f"  step {a.step}: {a.action} ({a.cause}) {a.detail}" for a in self.actions)
        return "\n".join(lines)

    def latest(self) -> dict:
        """The last recorded step as one flat dict, for wandb.log or any logger:

            {"grad_norm/<layer>": ..., "grad_abs_mean/<layer>": ..., "grad_std/<layer>": ...,
             "grad_zero_fraction/<layer>": ..., "update_ratio/<layer>": ...,
             "gradguard/step": ..., "gradguard/findings": findings so far,
             "gradguard/flagged_layers": layers flagged now}

        Values a step did not have (an absent layer, an update ratio without a
        StepReport) are left out rather than logged as NaN. {} before any step."""
        if self._series is None or self._count == 0:
            return {}
        row = (self._count - 1) % self.window
        flat = {}
        for series, prefix in _LOGGED:
            values = self._series[series][row]
            for layer, value in zip(self.names, values):
                if not np.isnan(value):
                    flat[f"{prefix}/{layer}"] = float(value)
        flat["gradguard/step"] = int(self._steps[row])
        flat["gradguard/findings"] = len(self.findings)
        flat["gradguard/flagged_layers"] = len(self.summary()["flagged"])
        return flat

    def log_to(self, writer, step: Optional[int] = None) -> None:
        """Write the last step to a TensorBoard SummaryWriter (torch.utils.tensorboard
        or tensorboardX; anything with add_scalar(tag, value, global_step) and
        add_text(tag, text, global_step)): every value of latest() as a scalar,
        and the findings made since the previous log_to as one text entry.
        step: the global step to log at (default: the monitor's last step)."""
        flat = self.latest()
        if not flat:
            return
        global_step = flat["gradguard/step"] if step is None else int(step)
        for tag, value in flat.items():
            if tag != "gradguard/step":
                writer.add_scalar(tag, value, global_step)
        new = self.findings[self._logged_findings :]
        if new:
            writer.add_text("gradguard/findings", "\n\n".join(f.message for f in new), global_step)
        self._logged_findings = len(self.findings)

    def to_csv(self, path) -> None:
        """The kept window, one row per step and layer."""
        data = self.history()
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "layer"] + list(_SERIES))
            for row, step in enumerate(data["step"]):
                for index, layer in enumerate(self.names):
                    writer.writerow([int(step), layer] + [repr(float(data[name][row, index])) for name in _SERIES])

    def to_jsonl(self, path) -> None:
        """The findings, one JSON object a line."""
        with open(path, "w") as handle:
            for finding in self.findings:
                handle.write(
                    json.dumps(
                        {
                            "step": finding.step,
                            "layer": finding.layer,
                            "kind": finding.kind,
                            "evidence": finding.evidence,
                            "message": finding.message,
                        },
                        default=float,
                    )
                    + "\n"
                )
