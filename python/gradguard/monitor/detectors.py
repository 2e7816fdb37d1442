"""The detectors: one per kind of finding (exploding, dead, vanishing,
update ratio), each over all layers at once with NumPy, in order of priority
(a layer flagged by one is not flagged by the next), on typed per-layer
state: a streak per condition that needs `patience` steps, reported once per
episode."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .settings import MonitorSettings

__all__ = ["Finding", "REMEDIES", "Streaks", "LayerStates", "Detectors", "StepView"]

REMEDIES = {
    "exploding": "clip the global norm (or use AutoClip/ZClip) or lower the learning rate",
    "vanishing": "add residual connections or normalisation, or use an initialisation suited to the activation",
    "dead": "use a leaky activation or a lower learning rate",
    "update_ratio": "adjust this layer's learning rate",
    "loss_spike": "skip the step (a bad batch), or clip and lower the learning rate when a layer's gradient rose first",
}

# A layer's gradient "rose" before a loss spike when its log norm stood this many
# robust spreads above its history's median (or was not finite).
ROSE_Z = 3.0
# The least spread of a positive loss's log over its window (5 %: a loss that
# barely moves must not turn a 20 % wobble into a spike).
LOSS_MIN_LOG_SPREAD = 0.05
# Steps whose median is the loss's current level.
LOSS_LEVEL_STEPS = 16


@dataclass(frozen=True)
class Finding:
    step: int
    layer: str
    kind: str  # "vanishing", "exploding", "dead", "update_ratio"
    evidence: dict = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class StepView:
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
    baseline_count: np.ndarray  # positive finite norms the baseline was taken over
    has_history: np.ndarray
    present: np.ndarray  # layers with a gradient this step
    recent: object = None  # recent(layers, count): median of those layers' last `count` positive finite norms


@dataclass
class Streaks:
    """One condition's per-layer streaks: steps it has held (streak), the step
    the streak began (since), steps it has been clear, and whether this episode
    was reported."""

    streak: np.ndarray
    since: np.ndarray
    clear: np.ndarray
    reported: np.ndarray

    @classmethod
    def zeros(cls, layers):
        return cls(*(np.zeros(layers, dtype=np.int64) for _ in range(3)), np.zeros(layers, dtype=bool))

    def advance(self, condition, step, blocked, patience, clear_after=None, blocked_counts=False):
        """Advance the streaks; return the layers to report now: held for
        `patience` steps, not reported in this episode, not taken by a
        higher-priority finding. An episode ends after `clear_after` (default
        `patience`) clear steps. blocked_counts: an episode a higher-priority
        finding took is over for this condition too (not reported once that one ends)."""
        self.since = np.where(condition & (self.streak == 0), step, self.since)
        self.streak = np.where(condition, self.streak + 1, 0)
        self.clear = np.where(condition, 0, self.clear + 1)
        reported = self.reported & (self.clear < (patience if clear_after is None else clear_after))
        due = (self.streak >= patience) & ~reported & ~blocked
        self.reported = reported | due | ((self.streak >= patience) & blocked if blocked_counts else False)
        return due

    def active(self, patience):
        return self.streak >= patience


@dataclass
class LayerStates:
    """Every detector's per-layer state."""

    layers: int
    vanishing: Streaks = None
    dead: Streaks = None
    update_ratio: Streaks = None
    growth_streak: np.ndarray = None  # steps in a row the norm grew by growth_factor
    exploding: np.ndarray = None  # flagged exploding at the last step
    sustained: Streaks = None  # steps in a row above sustained_growth x the long-run level
    reference: np.ndarray = None  # the long-run level: lowest baseline median (log), NaN before it is taken

    STREAK_KINDS = ("vanishing", "dead", "update_ratio", "sustained")
    loss_reported: bool = False  # the current loss-spike episode was reported
    loss_clear: int = 0  # steps the loss has been below the spike bound

    def __post_init__(self):
        self.vanishing, self.dead, self.update_ratio, self.sustained = (Streaks.zeros(self.layers) for _ in range(4))
        self.growth_streak = np.zeros(self.layers, dtype=np.int64)
        self.exploding = np.zeros(self.layers, dtype=bool)
        self.reference = np.full(self.layers, np.nan)

    def add_layers(self, count):
        """Layers joining: every state of theirs starts fresh (no streak, nothing reported, no level yet)."""
        fresh = LayerStates(count)
        for name in self.STREAK_KINDS:
            mine, theirs = getattr(self, name), getattr(fresh, name)
            for part in ("streak", "since", "clear", "reported"):
                setattr(mine, part, np.concatenate([getattr(mine, part), getattr(theirs, part)]))
        for name in ("growth_streak", "exploding", "reference"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(fresh, name)]))
        self.layers += count

    def flagged(self, patience) -> dict:
        """kind -> per-layer bool: the layers each condition holds for now (the
        one statement of what "flagged" means, for summary() and the report)."""
        return {
            "vanishing": self.vanishing.active(patience),
            "exploding": self.exploding,
            "dead": self.dead.active(patience),
            "update_ratio": self.update_ratio.active(patience),
        }


class Detectors:
    """The four detectors over one monitor's layers."""

    def __init__(self, settings: MonitorSettings, names):
        self.settings, self.names = settings, list(names)
        self.states = LayerStates(len(self.names))

    def add_layers(self, names):
        self.names += list(names)
        self.states.add_layers(len(names))

    def detect(self, step, norm, zero_fraction, ratio, stats, previous, baseline, present=None, recent=None):
        """The step's findings, one detector per kind over all layers at once, in
        order of priority: a layer flagged by one is not flagged by the next.
        Layers absent this step (present False) count as finite, and their NaN
        statistics meet no condition."""
        count, center, spread = baseline.count, baseline.center, baseline.spread
        present = np.ones(len(norm), dtype=bool) if present is None else present
        finite = np.isfinite(norm) | ~present
        positive = finite & (norm > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(positive, np.log(np.where(positive, norm, 1.0)), np.nan)
        view = StepView(
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
            count,
            count >= self.settings.min_history,
            present,
            recent,
        )
        findings = []
        exploding = self.exploding(view, findings)
        dead = self.dead(view, findings, blocked=exploding)
        vanishing = self.vanishing(view, findings, blocked=exploding | dead, exploding=exploding)
        self.update_ratio(view, findings, blocked=exploding | dead | vanishing)
        return findings

    def loss_spike(self, step, loss, losses, history, baseline):
        """A loss far above its recent level (robust z-score over the last
        loss_window steps above loss_spike_z and loss_rise above the median), or
        not finite: one finding per episode, whose evidence is the layer whose
        gradient norm rose first in the steps before it (history's kept norms
        against each layer's baseline)."""
        s, state = self.settings, self.states
        finite = losses[np.isfinite(losses)]
        median = float(np.median(finite)) if finite.size else float("nan")
        z = float("inf")
        if math.isfinite(loss):
            if finite.size < s.min_history:
                condition = False
            else:
                # Positive losses are judged in log space: a loss near zero is
                # heavy-tailed (0.001 one batch, 0.03 the next) and its spikes are
                # relative; a loss that can be negative (a GAN's, an ELBO) as it is.
                # The level is the median of the recent steps and the noise is taken
                # from step-to-step differences, so that a falling loss (a trend)
                # widens neither.
                positive = loss > 0 and finite.min() > 0
                values, now = (np.log(finite), math.log(loss)) if positive else (finite, loss)
                center = float(np.median(values[-LOSS_LEVEL_STEPS:]))
                noise = 1.4826 * float(np.median(np.abs(np.diff(values)))) / math.sqrt(2.0)
                floor = LOSS_MIN_LOG_SPREAD if positive else 1e-12 * max(abs(center), 1e-30)
                z = (now - center) / max(noise, floor)
                condition = z > s.loss_spike_z and loss - median > s.loss_rise * abs(median)
        else:
            condition = True
        state.loss_clear = 0 if condition else state.loss_clear + 1
        if state.loss_reported and state.loss_clear >= s.patience:
            state.loss_reported = False
        if not condition or state.loss_reported:
            return []
        state.loss_reported = True
        evidence = {"loss": float(loss), "median_loss": median, "z": float(z)}
        evidence.update(self._first_riser(history, baseline, s.patience * 2))
        evidence["remedy"] = REMEDIES["loss_spike"]
        if evidence["first_layer"] is None:
            cause = "no layer's gradient rose before it (a bad batch?)"
        else:
            cause = (
                f"{evidence['first_layer']}'s gradient rose first, at step {evidence['first_step']} "
                f"(norm {evidence['first_norm']:.3g}, z = {evidence['first_z']:.1f})"
            )
        what = (
            "is not finite"
            if not math.isfinite(loss)
            else f"is {loss:.4g}, {loss / median:.3g}x the median of its last {losses.size} steps (z = {z:.1f})"
        )
        message = f"loss at step {step} {what}; {cause}; remedy: {REMEDIES['loss_spike']}"
        return [Finding(step, "loss", "loss_spike", evidence, message)]

    def _first_riser(self, history, baseline, steps):
        """The layer whose norm rose (ROSE_Z robust spreads above its median, or not
        finite) earliest in the last `steps` kept steps, the highest z at that step."""
        kept_steps, norms = history.recent_rows("norm", steps)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (np.log(norms) - baseline.center) / baseline.spread
        rose = np.where(np.isnan(norms), False, ~np.isfinite(norms) | (z > ROSE_Z))
        rose &= (baseline.count >= self.settings.min_history) | ~np.isfinite(norms)
        rows = np.flatnonzero(rose.any(axis=1))
        if rows.size == 0:
            return {"first_layer": None, "first_step": None, "first_norm": None, "first_z": None}
        row = rows[0]
        scores = np.where(rose[row], np.where(np.isfinite(norms[row]), z[row], np.inf), -np.inf)
        layer = int(np.argmax(scores))
        return {
            "first_layer": self.names[layer],
            "first_step": int(kept_steps[row]),
            "first_norm": float(norms[row, layer]),
            "first_z": float(z[row, layer]) if np.isfinite(z[row, layer]) else float("inf"),
        }

    def _report(self, findings, step, mask, kind, evidence_of, message_of):
        for index in np.flatnonzero(mask):
            layer = self.names[index]
            evidence = dict(evidence_of(index), remedy=REMEDIES[kind])
            message = f"{message_of(index).replace('{layer}', layer)}; remedy: {REMEDIES[kind]}"
            findings.append(Finding(step, layer, kind, evidence, message))

    def exploding(self, view, findings):
        """Non-finite values, far above the step's median layer (both from step 0),
        a spike (robust z-score of log norm) or geometric growth; each reported as
        it starts. Returns the layers exploding this step."""
        s, state, norm = self.settings, self.states, view.norm
        already = state.exploding
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
            spike = view.has_history & view.positive & (z > s.spike_z)
            if view.previous is None:
                grew = np.zeros(len(norm), dtype=bool)
            else:
                grew = view.positive & (view.previous > 0) & (norm >= s.growth_factor * view.previous)
            # The reference is the median of the plausible layers (norm at most explode_floor):
            # layers that are themselves exploding must not drag it up.
            plausible = view.positive & (norm <= s.explode_floor)
            median = float(np.median(norm[plausible])) if plausible.any() else np.nan
            above = view.positive & (norm > s.explode_floor) & (norm > s.explode_ratio * median)
        state.growth_streak = np.where(grew, state.growth_streak + 1, 0)
        with np.errstate(invalid="ignore", over="ignore"):
            well_above = ~view.has_history | (norm > s.growth_over_history * np.exp(view.center))
        growing = (state.growth_streak >= s.growth_steps) & well_above
        # Sustained growth: a rolling baseline follows a slow rise, so no step is a
        # spike; the long-run level (the lowest median the layer's window has had,
        # taken once it holds reference_history steps) does not follow it.
        # The test is on the median of the last `sustained_steps` norms (this step's
        # included), so that step-to-step noise neither triggers nor delays it;
        # it is read only for layers whose norm is above the bound this step.
        settled = view.baseline_count >= s.reference_history
        state.reference = np.where(settled, np.fmin(state.reference, view.center), state.reference)
        with np.errstate(invalid="ignore"):
            bound = state.reference + np.log(s.sustained_growth)
            risen = view.positive & (view.logs > bound)
        # (layers in an episode are read too: their median decides when it ends)
        candidates = np.flatnonzero(risen | (state.sustained.streak > 0) | state.sustained.reported)
        recent = np.full(len(norm), np.nan)
        if candidates.size:
            recent[candidates] = view.recent(candidates, s.sustained_steps)
            # Hysteresis: an episode lasts until the median falls below half the
            # bound, so a level hovering at the bound is one finding, not several.
            with np.errstate(divide="ignore", invalid="ignore"):
                risen = np.log(recent) > bound - np.where(state.sustained.reported, np.log(2.0), 0.0)
                # A layer that grows with the whole model (a learning phase lifts
                # every layer's gradient) is not this finding: it must also stand
                # sqrt(sustained_growth) above the median layer's growth this step.
                growth = view.logs - state.reference
                others = growth[np.isfinite(growth)]
                if others.size >= 3:
                    risen &= np.log(recent) - state.reference > np.median(others) + 0.5 * np.log(s.sustained_growth)
        sustained = state.sustained.advance(
            risen, view.step, above | spike | growing | already, 1, clear_after=s.patience, blocked_counts=True
        )
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
            lambda i: {"norm": float(norm[i]), "growth_steps": int(state.growth_streak[i])},
            lambda i: (
                f"{{layer}}: norm grew x{s.growth_factor:g} or more for "
                f"{state.growth_streak[i]} steps, now {norm[i]:.3g}"
            ),
        )
        self._report(
            findings,
            view.step,
            sustained,
            "exploding",
            lambda i: {
                "norm": float(norm[i]),
                "recent_median_norm": float(recent[i]),
                "long_run_norm": float(np.exp(state.reference[i])),
                "times": float(recent[i] / np.exp(state.reference[i])),
            },
            lambda i: (
                f"{{layer}}: norm {recent[i]:.3g} (median of the last {s.sustained_steps} steps) is "
                f"{recent[i] / np.exp(state.reference[i]):.3g}x its long-run level {np.exp(state.reference[i]):.3g} "
                "(sustained growth)"
            ),
        )
        state.exploding = ~view.finite | above | spike | growing | state.sustained.active(s.patience)
        return state.exploding.copy()

    def dead(self, view, findings, blocked):
        """At least dead_fraction of the gradient exactly zero for `patience` steps
        running, in a tensor of two or more dimensions (or of unknown shape). A
        vector's gradient can be exactly zero by cancellation (a bias under a
        loss that differences two batches, as a WGAN critic's; a gain in a
        linear region); dead units zero their weight's gradient too."""
        s, state, zero_fraction = self.settings, self.states, view.zero_fraction
        condition = view.finite & (zero_fraction >= s.dead_fraction)
        ndim = getattr(view.stats, "ndim", None)
        if ndim is not None:
            condition &= ndim != 1
        due = state.dead.advance(condition, view.step, blocked, s.patience)
        self._report(
            findings,
            view.step,
            due,
            "dead",
            lambda i: {"zero_fraction": float(zero_fraction[i])},
            lambda i: (
                f"{{layer}}: {zero_fraction[i]:.0%} of its gradient is exactly 0 since step "
                f"{state.dead.since[i]} (dead units)"
            ),
        )
        return condition

    def vanishing(self, view, findings, blocked, exploding):
        """Below an absolute floor, far below the step's median layer (taken over the
        layers not exploding), or far below the layer's own history, for `patience` steps."""
        s, state, norm, finite = self.settings, self.states, view.norm, view.finite
        calm = finite & ~exploding & view.present
        median_layer = float(np.median(norm[calm])) if calm.any() else np.nan
        below_floor = finite & (norm < s.vanishing_floor)
        below_median = finite & (median_layer > 0) & (norm < s.vanishing_ratio * median_layer)
        with np.errstate(invalid="ignore"):
            decayed = finite & view.has_history & (norm < s.decay_ratio * np.exp(view.center))
        condition = below_floor | below_median | decayed
        ndim = getattr(view.stats, "ndim", None)
        if ndim is not None:  # a vector exactly zero cancels (see the dead test): not vanishing either
            condition &= ~((ndim == 1) & (view.zero_fraction >= 1.0))
        due = state.vanishing.advance(condition, view.step, blocked, s.patience)
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
                f"{{layer}} is vanishing since step {state.vanishing.since[i]}: "
                f"norm {norm[i]:.3g} ({', '.join(reasons_of(i))})"
            ),
        )
        return condition

    def update_ratio(self, view, findings, blocked):
        """||w_new - w_old|| / ||w_new|| outside [update_ratio_low, update_ratio_high]
        for `patience` steps running (only where a StepReport gave the update)."""
        s, state, ratio = self.settings, self.states, view.ratio
        with np.errstate(invalid="ignore"):
            off = np.isfinite(ratio) & ((ratio > s.update_ratio_high) | (ratio < s.update_ratio_low))
        due = state.update_ratio.advance(off & view.finite, view.step, blocked, s.patience)
        self._report(
            findings,
            view.step,
            due,
            "update_ratio",
            lambda i: {"ratio": float(ratio[i])},
            lambda i: (
                f"{{layer}}: update / weight = {ratio[i]:.3g}, too "
                f"{'large' if ratio[i] > s.update_ratio_high else 'small'} "
                f"since step {state.update_ratio.since[i]}"
            ),
        )
