"""GradientMonitor: per-layer detection of vanishing, exploding and dead gradients.

Each update reads the gradients once (gg.grad_stats), keeps a bounded history
(the last `window` steps), and returns that step's findings: each a layer, a
kind, the step, the numbers behind it and one readable line. A condition is
reported when it starts (with the step its streak began) and again only after
it has cleared.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Optional

import numpy as np

from .._arguments import Arrays, as_array_list, duplicates, in_order_of, positive_int, real
from ..stats import STATS_FIELDS, GradStats, stats_of
from . import checkpoint, sinks
from .detectors import Detectors, Finding
from .history import History, empty_history
from .settings import MonitorSettings

__all__ = ["GradientMonitor", "Finding"]

# Weights whose root mean square is below this count as zero for the update ratio.
NEAR_ZERO_RMS = 1e-8


def _norm_after(value):
    """norm_after_clip checked before anything is recorded: >= 0, inf or NaN (a clip of a broken step), or None."""
    return real(value, "norm_after_clip", low=0.0, allow_none=True, allow_nan=True)


def _with_origin(finding, origin):
    """A non-finite finding (NaN/inf gradients, a non-finite loss) with where the value was born."""
    nonfinite = "n_nan" in finding.evidence or (
        finding.kind == "loss_spike" and not np.isfinite(finding.evidence["loss"])
    )
    if not nonfinite:
        return finding
    message = finding.message.replace("; remedy:", f"; the first inf/NaN of the step: {origin}; remedy:", 1)
    return dataclasses.replace(finding, evidence=dict(finding.evidence, origin=origin), message=message)


def _loss(value):
    """loss checked before anything is recorded: a real number (NaN and inf accepted), or None."""
    return real(value, "loss", allow_none=True, allow_nan=True)


def _spread_out(stats, present, names):
    """GradStats of the present layers laid out over all of them: NaN moments and
    zero counts where a layer is absent."""
    fields = {}
    for key in STATS_FIELDS:
        values = getattr(stats, key)
        full = (
            np.zeros(len(present), dtype=values.dtype) if values.dtype.kind in "iu" else np.full(len(present), np.nan)
        )
        full[present] = values
        fields[key] = full
    ndim = None
    if stats.ndim is not None:
        ndim = np.zeros(len(present), dtype=np.int64)
        ndim[present] = stats.ndim
    return GradStats(names=tuple(names), global_norm=stats.global_norm, ndim=ndim, **fields)


class GradientMonitor:
    """Tracks per-layer gradient statistics and flags layers in trouble.

    Each condition is reported once, when it has held for `patience` steps (or
    at once for the checks that need no history), with the step its streak
    began, the numbers behind it and the remedy they point to; it is reported
    again only after it has cleared for `patience` steps. A layer gets one
    finding per cause: exploding outranks dead, dead outranks vanishing, and
    either outranks an update-ratio finding. Non-finite gradients are reported
    as exploding at once. The detectors run on NumPy arrays over all layers;
    only layers with something to report cost Python time.

    names: the layers (default: from the first step, a dict's keys or
    positions). The settings, all keyword arguments but window (MonitorSettings):
    """

    def __init__(self, names=None, window=256, **settings):
        self.settings = MonitorSettings(window=window, **settings)
        self.window = self.settings.window
        self.max_findings = self.settings.max_findings
        self.names = None if names is None else [str(n) for n in names]
        if self.names is not None and duplicates(self.names):
            raise ValueError(f"names must be unique (as strings); repeated: {duplicates(self.names)}")
        self._named = names is not None  # whether layers have real names, so that dicts match by them
        self.findings = []
        self.actions = []  # what a gg.Guard did, for the report (bounded like the findings)
        self._logged_findings = 0  # findings already written by log_to
        self.recorded: Optional[History] = None  # the kept steps, from the first one on
        self._detectors: Optional[Detectors] = None
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
        norm_after_clip: Optional[float] = None,
        loss: Optional[float] = None,
    ) -> list:
        """Record one step's gradients and return its findings.

        grads: a dict name -> array, or a list. Once the monitor knows its
        layers' names (from `names=` or a first dict), a dict is matched by
        name: a name it has not seen is a layer joining at this step (judged
        from here on, on its own history), a known layer left out raises a
        ValueError naming it unless allow_missing; a list pairs by position. params is deprecated and ignored
        (a DeprecationWarning says so): the update-ratio rule needs the
        update actually applied, which `step_report=` gives: the
        StepReport of a gg.optim step (`step(..., return_report=True)`) over
        these layers, matched by name when both sides have names, else by
        position. A refused update changes nothing.

        allow_missing: a dict may leave out some of the monitor's layers (a
        frozen layer, an unused branch: a parameter without a gradient this
        step). Their statistics are NaN for the step, nothing is detected on
        them, and a streak they were on starts again. Names the monitor does
        not know are still refused.

        norm_after_clip: the global L2 norm of these gradients after the
        step's clip, from a caller that clips them (or knows what its clip
        did). The step then counts as clipped when that is below their norm,
        and latest(), report() and history() carry both norms and the clip
        rate over the window. None: the clip is unknown for this step.

        loss: the step's loss (a real number; NaN and inf are news, not
        mistakes). A loss far above its recent level is a "loss_spike"
        finding of its own, whose evidence names the layer whose gradient
        norm rose first in the steps before it (None when none did: a bad
        batch rather than a layer running away).
        """
        after = _norm_after(norm_after_clip)
        loss = _loss(loss)
        array_list, names = as_array_list(grads, "grads")
        labels, order, subset, present = self._matched(names, len(array_list), allow_missing, "gradients", "grads")
        array_list = [array_list[index] for index in order]
        stats = stats_of(array_list, subset, "grads")
        if present is not None:
            stats = _spread_out(stats, present, labels)
            slots, empty = iter(array_list), np.empty(0)
            array_list = [next(slots) if here else empty for here in present]
        step = self._last_step + 1 if step is None else positive_int(step, "step", minimum=0)
        if params is not None:
            warnings.warn(
                "GradientMonitor.update(params=) is ignored and will be removed: the update-ratio rule reads the "
                "update actually applied, from step_report=",
                DeprecationWarning,
                stacklevel=2,
            )
        layer_names = labels if labels is not None else [str(i) for i in range(len(array_list))]
        ratio = self._update_ratios(step_report, layer_names, array_list)
        return self._record(stats, step, ratio, present, layer_names, names is not None, after, loss)

    def check_update(self, grads: Arrays, *, allow_missing: bool = False) -> None:
        """Refuse here, recording nothing, the gradients update(grads,
        allow_missing=) would refuse for their container, count or names: a
        caller that steps before it updates the monitor (gg.Guard) checks first."""
        array_list, names = as_array_list(grads, "grads")
        self._matched(names, len(array_list), allow_missing, "gradients", "grads")

    def check_layers(self, names, *, allow_missing: bool = False) -> None:
        """check_update for a step known by its layers' names alone (gradients
        that live on a device: update_stats will record them)."""
        names = [str(name) for name in names]
        if duplicates(names):
            raise ValueError(f"names layers more than once: {duplicates(names)}")
        self._matched(names, len(names), allow_missing, "layers' statistics", "stats")

    def update_stats(
        self,
        stats: GradStats,
        step: Optional[int] = None,
        *,
        allow_missing: bool = False,
        norm_after_clip: Optional[float] = None,
        loss: Optional[float] = None,
        nonfinite_origin: Optional[str] = None,
    ) -> list:
        """Record one step from statistics already taken (gg.grad_stats, or
        combined over ranks by gradguard.distributed.grad_stats) and return its
        findings: one read of the gradients can serve the norm, the clip and
        the monitor. Layers are matched by name as in update (a GradStats
        without names pairs by position). The update-ratio rule is not applied:
        it needs the update itself (update(..., step_report=)). allow_missing,
        norm_after_clip and loss as in update: named statistics may leave out
        some of the monitor's layers; stats.global_norm is the norm before the clip.
        nonfinite_origin: where this step's inf/NaN started, in words (from
        gradguard.torch.origin): its non-finite findings carry it as evidence
        ("origin") and in their message.
        """
        after = _norm_after(norm_after_clip)
        loss = _loss(loss)
        if not isinstance(stats, GradStats):
            raise TypeError(f"stats must be a GradStats (from gg.grad_stats), not {type(stats).__name__}")
        names = [str(name) for name in stats.names] if stats.names is not None else None
        if names is not None and duplicates(names):
            raise ValueError(f"stats names layers more than once: {duplicates(names)}")
        labels, order, subset, present = self._matched(names, len(stats), allow_missing, "layers' statistics", "stats")
        order = np.asarray(order, dtype=np.intp)  # converted once, not per field (thousands of layers)
        fields = {key: getattr(stats, key)[order] for key in STATS_FIELDS}
        subset = tuple(subset) if subset is not None else None
        ndim = None if stats.ndim is None else stats.ndim[order]
        stats = GradStats(names=subset, global_norm=stats.global_norm, ndim=ndim, **fields)
        if present is not None:
            stats = _spread_out(stats, present, labels)
        step = self._last_step + 1 if step is None else positive_int(step, "step", minimum=0)
        layer_names = labels if labels is not None else [str(i) for i in range(len(stats))]
        ratio = np.full(len(stats), np.nan)
        return self._record(stats, step, ratio, present, layer_names, names is not None, after, loss, nonfinite_origin)

    def _matched(self, names, count, allow_missing, noun, argument):
        """How one step's entries (named, or by position) map onto the layers:
        (labels, order, subset, present). Entry order[i] is layer subset[i];
        labels are all the layers' names (None before the first step of an
        unnamed monitor); present marks the layers given (None: all of them)."""
        known = self.names if self.recorded is not None or self.names is not None else None
        if known is not None and self._named and names is not None:
            # A layer the monitor has not seen joins (an expert's first token, a layer
            # unfrozen or added late): it is judged from here on, on its own history.
            seen = set(known)
            known = known + [name for name in names if name not in seen]
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

    def _record(self, stats, step, ratio, present, layer_names, named, norm_after_clip, loss=None, origin=None):
        """Append one step's series and run the detectors (both update paths end here)."""
        if self.recorded is not None and len(layer_names) > len(self.names):
            joined = len(layer_names) - len(self.names)
            self.recorded.add_layers(joined)
            self._detectors.add_layers(layer_names[len(self.names) :])
            self.names = list(layer_names)
        if self.recorded is None:
            self.names = layer_names
            self._named = self._named or named
            self.recorded = History(
                self.window, len(self.names), self.settings.baseline_refresh, self.settings.min_history
            )
            self._detectors = Detectors(self.settings, self.names)
        # A layer with no elements (or absent this step) has nothing to judge: its
        # series are NaN and the detectors leave it out, as they do an absent layer.
        empty = stats.numel == 0
        if empty.any():
            present = ~empty if present is None else present & ~empty
        norm = np.where(((stats.n_nan + stats.n_inf) > 0) | empty, np.nan, stats.l2)
        previous = self.recorded.previous_norm()
        baseline = self.recorded.baseline()
        values = {
            "norm": norm,
            "abs_mean": stats.abs_mean,
            "std": stats.std,
            # n_zero < 0: not counted (gradguard.torch's device path, for a monitor whose dead_fraction is 1)
            "zero_fraction": np.where(empty | (stats.n_zero < 0), np.nan, stats.n_zero / np.maximum(stats.numel, 1)),
            "update_ratio": ratio,
            "grad_norm": stats.global_norm,
            "norm_after_clip": np.nan if norm_after_clip is None else norm_after_clip,
            "loss": np.nan if loss is None else loss,
        }
        losses = self.recorded.previous_totals("loss", self.settings.loss_window)
        self.recorded.append(step, values)
        self._last_step = step
        new = self._detectors.detect(
            step, norm, values["zero_fraction"], ratio, stats, previous, baseline, present, self.recorded.recent_norm
        )
        if loss is not None:
            new += self._detectors.loss_spike(step, loss, losses, self.recorded, baseline)
        if origin is not None:
            new = [_with_origin(finding, origin) for finding in new]
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
        judged = known & matrices & (weight > NEAR_ZERO_RMS * np.sqrt(sizes))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(judged, update / weight, ratio)

    def note_action(self, action) -> None:
        """Record an action taken on the run (gg.Guard calls this), shown by report()."""
        if len(self.actions) < self.max_findings:
            self.actions.append(action)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The monitor's whole state as plain lists and numbers (torch.save with
        weights_only loading, JSON and Lightning checkpoints carry it): layers,
        the kept window, baselines, streaks, findings and actions. A monitor
        made with the same settings and given load_state_dict(state) makes,
        from the next step on, the findings this one would."""
        return checkpoint.monitor_state(self)

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a state_dict(). Checked whole first (same settings, same layer
        names when this monitor was given names, every array of the right
        shape); nothing changes unless all of it is valid."""
        checkpoint.load_monitor_state(self, state_dict)

    # -- reading -------------------------------------------------------------------------
    def history(self) -> dict:
        """The kept window as NumPy arrays, oldest first: 'step' (steps,);
        steps x layers arrays 'norm', 'abs_mean', 'std', 'zero_fraction',
        'update_ratio'; and (steps,) arrays 'grad_norm' (the global norm the
        monitor was given) and 'norm_after_clip' (NaN where the clip is unknown)."""
        if self.recorded is None:
            return empty_history(self.names or [])
        return self.recorded.as_dict(self.names)

    def clip_rate(self) -> float:
        """The fraction of the kept window's steps that were clipped, over the
        steps whose clip is known (norm_after_clip given); NaN when none is."""
        return float("nan") if self.recorded is None else self.recorded.clip_rate()

    def summary(self) -> dict:
        """Counts of findings per kind and the layers currently flagged."""
        kinds = {}
        for finding in self.findings:
            kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
        flagged = {}
        if self._detectors is not None:
            active = self._detectors.states.flagged(self.settings.patience)
            for index, layer in enumerate(self.names):
                current = [kind for kind, layers in active.items() if layers[index]]
                if current:
                    flagged[layer] = current
        return {
            "steps": 0 if self.recorded is None else self.recorded.count,
            "last_step": self._last_step,
            "layers": len(self.names or []),
            "findings": kinds,
            "flagged": flagged,
        }

    def report(self) -> str:
        """A per-layer table: current norm, trend over the kept window, current findings."""
        return sinks.text_report(self)

    def latest(self) -> dict:
        """The last recorded step as one flat dict, for wandb.log or any logger (see sinks.latest)."""
        return sinks.latest(self)

    def log_to(self, writer, step: Optional[int] = None) -> None:
        """Write the last step to a TensorBoard SummaryWriter, and the findings
        made since the previous log_to as one text entry (see sinks.log_to)."""
        self._logged_findings = sinks.log_to(self, writer, step, since=self._logged_findings)

    def to_csv(self, path) -> None:
        """The kept window, one row per step and layer."""
        sinks.to_csv(self, path)

    def to_jsonl(self, path) -> None:
        """The findings, one JSON object a line."""
        sinks.to_jsonl(self, path)


GradientMonitor.__signature__ = inspect.Signature(
    [
        inspect.Parameter("names", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
        inspect.Parameter("window", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=256),
    ]
    + [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in MonitorSettings.parameters()[1:]]
)
GradientMonitor.__doc__ += MonitorSettings.documentation() + "\n"
