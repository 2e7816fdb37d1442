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
import math
from dataclasses import dataclass, field

import numpy as np

from ._arguments import as_array_list
from .stats import grad_stats

__all__ = ["GradientMonitor", "Finding"]

_SERIES = ("norm", "abs_mean", "std", "zero_fraction", "update_ratio")


@dataclass(frozen=True)
class Finding:
    step: int
    layer: str
    kind: str          # "vanishing", "exploding", "dead", "update_ratio"
    evidence: dict = field(default_factory=dict)
    message: str = ""


@dataclass
class _LayerState:
    vanishing_streak: int = 0
    vanishing_since: int = -1
    dead_streak: int = 0
    dead_since: int = -1
    ratio_streak: int = 0
    ratio_since: int = -1
    growth_streak: int = 0
    exploding: bool = False
    reported: set = field(default_factory=set)


class GradientMonitor:
    """Tracks per-layer gradient statistics and flags layers in trouble.

    Defaults (all keyword arguments, all documented in findings' evidence):
      window=256        steps of history kept (memory independent of run length)
      patience=5        consecutive steps a vanishing / dead / update-ratio condition must hold
      vanishing_floor=1e-10       norm below this is vanishing outright
      vanishing_ratio=1e-4        ... or this far below the median layer of the step (4 orders)
      decay_ratio=1e-3            ... or this far below the layer's own median history
      spike_z=8.0       exploding: robust z-score of log(norm) against the layer's history
                        (median and 1.4826 x MAD of the kept window, MAD at least 0.05)
      min_history=20    steps of history before the z-score and decay tests apply
      growth_factor=2.0, growth_steps=5   exploding: norm at least doubling 5 steps in a row
      dead_fraction=0.9 dead: at least this fraction of exact zeros (dead ReLUs)
      update_ratio_high=0.1, update_ratio_low=1e-7   ||g|| / ||w|| bounds, when params are given
    Non-finite gradients are reported as exploding at once.
    """

    def __init__(self, names=None, window=256, *, patience=5, vanishing_floor=1e-10, vanishing_ratio=1e-4,
                 decay_ratio=1e-3, spike_z=8.0, min_history=20, growth_factor=2.0, growth_steps=5,
                 dead_fraction=0.9, update_ratio_high=0.1, update_ratio_low=1e-7, max_findings=10000):
        if window < 2 or patience < 1 or min_history < 2 or min_history > window:
            raise ValueError("need window >= 2, patience >= 1 and 2 <= min_history <= window")
        self.names = None if names is None else [str(n) for n in names]
        self.window = int(window)
        self.settings = dict(patience=patience, vanishing_floor=vanishing_floor, vanishing_ratio=vanishing_ratio,
                             decay_ratio=decay_ratio, spike_z=spike_z, min_history=min_history,
                             growth_factor=growth_factor, growth_steps=growth_steps, dead_fraction=dead_fraction,
                             update_ratio_high=update_ratio_high, update_ratio_low=update_ratio_low)
        self.max_findings = max_findings
        self.findings = []
        self._steps = np.full(self.window, -1, dtype=np.int64)
        self._series = None
        self._states = None
        self._count = 0
        self._last_step = -1

    # -- updating -------------------------------------------------------------------------
    def update(self, grads, params=None, step=None):
        """Record one step's gradients (dict name -> array, or list) and return its findings."""
        array_list, names = as_array_list(grads, "grads")
        if self._series is None:
            self.names = self.names or names or [str(i) for i in range(len(array_list))]
            if len(self.names) != len(array_list):
                raise ValueError(f"{len(array_list)} gradients for {len(self.names)} layer names")
            self._series = {name: np.full((self.window, len(self.names)), np.nan) for name in _SERIES}
            self._states = [_LayerState() for _ in self.names]
        elif len(array_list) != len(self.names):
            raise ValueError(f"{len(array_list)} gradients; this monitor tracks {len(self.names)} layers")
        step = self._last_step + 1 if step is None else int(step)
        stats = grad_stats(array_list)
        numel = np.maximum(stats.numel, 1)
        norm = np.where((stats.n_nan + stats.n_inf) > 0, np.nan, stats.l2)
        ratio = np.full(len(self.names), np.nan)
        if params is not None:
            param_list, _ = as_array_list(params, "params")
            weights = grad_stats(param_list).l2
            ratio = np.divide(norm, weights, out=np.full_like(norm, np.nan), where=weights > 0)
        row = self._count % self.window
        previous = self._series["norm"][(self._count - 1) % self.window].copy() if self._count else None
        history = self._finite_history()
        values = {"norm": norm, "abs_mean": stats.abs_mean, "std": stats.std,
                  "zero_fraction": stats.n_zero / numel, "update_ratio": ratio}
        for name in _SERIES:
            self._series[name][row] = values[name]
        self._steps[row] = step
        self._count += 1
        self._last_step = step
        new = self._detect(step, norm, values["zero_fraction"], ratio, stats, previous, history)
        room = self.max_findings - len(self.findings)
        self.findings.extend(new[:max(room, 0)])
        return new

    def _finite_history(self):
        """The kept norms before this step (steps x layers), oldest first."""
        kept = min(self._count, self.window)
        order = [(self._count - kept + i) % self.window for i in range(kept)]
        return self._series["norm"][order] if self._series is not None else np.empty((0, 0))

    def _detect(self, step, norm, zero_fraction, ratio, stats, previous, history):
        s = self.settings
        findings = []
        finite_norms = norm[np.isfinite(norm)]
        median_layer = float(np.median(finite_norms)) if finite_norms.size else math.nan
        for index, layer in enumerate(self.names):
            state = self._states[index]
            value = norm[index]

            def report(kind, evidence, message, since):
                findings.append(Finding(step, layer, kind, evidence, message.format(layer=layer, since=since)))

            # exploding: non-finite, spike, geometric growth
            if not math.isfinite(value):
                if not state.exploding:
                    report("exploding", {"n_nan": int(stats.n_nan[index]), "n_inf": int(stats.n_inf[index])},
                           "{layer}: gradient holds NaN/inf since step {since}", step)
                state.exploding = True
                state.growth_streak = 0
                continue
            own = history[:, index] if history.size else np.empty(0)
            own = own[np.isfinite(own) & (own > 0)]
            spike = False
            if own.size >= s["min_history"] and value > 0:
                logs = np.log(own)
                center = float(np.median(logs))
                spread = max(1.4826 * float(np.median(np.abs(logs - center))), 0.05)
                z = (math.log(value) - center) / spread
                spike = z > s["spike_z"]
                if spike and not state.exploding:
                    report("exploding", {"norm": value, "z": z, "median_norm": math.exp(center)},
                           f"{{layer}}: norm {value:.3g} is a spike, z = {z:.1f} against its median {math.exp(center):.3g}",
                           step)
            grew = previous is not None and math.isfinite(previous[index]) and previous[index] > 0 and \
                value >= s["growth_factor"] * previous[index]
            state.growth_streak = state.growth_streak + 1 if grew else 0
            growing = state.growth_streak >= s["growth_steps"]
            if growing and not state.exploding and not spike:
                report("exploding", {"norm": value, "growth_steps": state.growth_streak},
                       f"{{layer}}: norm grew x{s['growth_factor']:g} or more for {state.growth_streak} steps, now {value:.3g}",
                       step - state.growth_streak + 1)
            state.exploding = spike or growing

            # vanishing: absolute floor, far below the median layer, or far below its own history
            reasons = []
            if value < s["vanishing_floor"]:
                reasons.append("floor")
            if math.isfinite(median_layer) and median_layer > 0 and value < s["vanishing_ratio"] * median_layer:
                reasons.append("below median layer")
            if own.size >= s["min_history"] and value < s["decay_ratio"] * float(np.median(own)):
                reasons.append("decayed from its history")
            if reasons:
                if state.vanishing_streak == 0:
                    state.vanishing_since = step
                state.vanishing_streak += 1
                if state.vanishing_streak == s["patience"]:
                    report("vanishing", {"norm": value, "median_layer_norm": median_layer, "reasons": reasons},
                           f"{{layer}} is vanishing since step {{since}}: norm {value:.3g} ({', '.join(reasons)})",
                           state.vanishing_since)
            else:
                state.vanishing_streak = 0

            # dead units
            if zero_fraction[index] >= s["dead_fraction"]:
                if state.dead_streak == 0:
                    state.dead_since = step
                state.dead_streak += 1
                if state.dead_streak == s["patience"]:
                    report("dead", {"zero_fraction": float(zero_fraction[index])},
                           f"{{layer}}: {zero_fraction[index]:.0%} of its gradient is exactly 0 since step {{since}} (dead units)",
                           state.dead_since)
            else:
                state.dead_streak = 0

            # update ratio ||g|| / ||w||
            r = ratio[index]
            if math.isfinite(r) and (r > s["update_ratio_high"] or r < s["update_ratio_low"]):
                if state.ratio_streak == 0:
                    state.ratio_since = step
                state.ratio_streak += 1
                if state.ratio_streak == s["patience"]:
                    side = "large" if r > s["update_ratio_high"] else "small"
                    report("update_ratio", {"ratio": r},
                           f"{{layer}}: |g|/|w| = {r:.3g} too {side} since step {{since}}", state.ratio_since)
            else:
                state.ratio_streak = 0
        return findings

    # -- reading -------------------------------------------------------------------------
    def history(self):
        """The kept window as NumPy arrays: 'step' (steps,), and steps x layers arrays
        'norm', 'abs_mean', 'std', 'zero_fraction', 'update_ratio'; oldest first."""
        kept = min(self._count, self.window)
        order = [(self._count - kept + i) % self.window for i in range(kept)]
        result = {"step": self._steps[order].copy(), "layers": list(self.names or [])}
        for name in _SERIES:
            result[name] = self._series[name][order].copy() if self._series is not None else np.empty((0, 0))
        return result

    def summary(self):
        """Counts of findings per kind and the layers currently flagged."""
        kinds = {}
        for finding in self.findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        flagged = {}
        if self._states:
            for layer, state in zip(self.names, self._states):
                current = [kind for kind, active in (
                    ("vanishing", state.vanishing_streak >= self.settings["patience"]),
                    ("exploding", state.exploding),
                    ("dead", state.dead_streak >= self.settings["patience"]),
                    ("update_ratio", state.ratio_streak >= self.settings["patience"])) if active]
                if current:
                    flagged[layer] = current
        return {"steps": self._count, "last_step": self._last_step, "layers": len(self.names or []),
                "findings": kinds, "flagged": flagged}

    def report(self):
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
        return "\n".join(lines)

    def to_csv(self, path):
        """The kept window, one row per step and layer."""
        data = self.history()
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "layer"] + list(_SERIES))
            for row, step in enumerate(data["step"]):
                for index, layer in enumerate(self.names):
                    writer.writerow([int(step), layer] + [repr(float(data[name][row, index])) for name in _SERIES])

    def to_jsonl(self, path):
        """The findings, one JSON object a line."""
        with open(path, "w") as handle:
            for finding in self.findings:
                handle.write(json.dumps({"step": finding.step, "layer": finding.layer, "kind": finding.kind,
                                         "evidence": finding.evidence, "message": finding.message}, default=float) + "\n")
