"""The monitor's state as a checkpoint holds it, and back.

Everything a resumed monitor needs to make the findings the uninterrupted one
would: its layers, the kept window of each series (ring order kept), the
cached baselines and their age, every detector's streaks, the findings and
guard actions so far. The form is plain Python (lists, numbers, strings,
None), so torch.save / torch.load(weights_only=True), JSON and Lightning
checkpoints all carry it. Loading checks the whole state before any of it is
applied: a refused state leaves the monitor as it was.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._arguments import positive_int, state_entries
from ..guard import GuardAction
from .detectors import Finding, LayerStates, Streaks
from .history import SERIES, TOTALS, Baseline, History

__all__ = ["monitor_state", "load_monitor_state"]

# 2: the history keeps the per-step global norm before and after the clip
# (a format-1 state loads with those unknown).
FORMAT = 2
READABLE = (1, 2)
_STREAK_FIELDS = ("streak", "since", "clear", "reported")
_STREAK_KINDS = LayerStates.STREAK_KINDS


def monitor_state(monitor) -> dict:
    """monitor.state_dict(): plain lists and numbers."""
    history = monitor.recorded
    return {
        "format": FORMAT,
        "settings": monitor.settings.as_dict(),
        "names": None if monitor.names is None else list(monitor.names),
        "named": monitor._named,
        "last_step": monitor._last_step,
        "logged_findings": monitor._logged_findings,
        "findings": [dataclasses.asdict(finding) for finding in monitor.findings],
        "actions": [_action_dict(action) for action in monitor.actions],
        "history": None if history is None else _history_state(history),
        "detectors": None if monitor._detectors is None else _detector_state(monitor._detectors.states),
    }


def _action_dict(action):
    if dataclasses.is_dataclass(action):
        return dataclasses.asdict(action)
    return {"step": action.step, "cause": action.cause, "action": action.action, "detail": action.detail}


def _history_state(history: History) -> dict:
    baseline = history._baseline
    return {
        "count": history.count,
        "steps": history.steps.tolist(),
        "series": {name: history.series[name].tolist() for name in SERIES},
        "totals": {name: history.totals[name].tolist() for name in TOTALS},
        "baseline": None
        if baseline is None
        else {"count": baseline.count.tolist(), "center": baseline.center.tolist(), "spread": baseline.spread.tolist()},
        "baseline_age": history._baseline_age,
        "baseline_kept": history._baseline_kept,
    }


def _detector_state(states: LayerStates) -> dict:
    saved = {
        kind: {name: getattr(getattr(states, kind), name).tolist() for name in _STREAK_FIELDS} for kind in _STREAK_KINDS
    }
    saved["growth_streak"] = states.growth_streak.tolist()
    saved["exploding"] = states.exploding.tolist()
    saved["reference"] = states.reference.tolist()
    saved["loss"] = {"reported": states.loss_reported, "clear": states.loss_clear}
    return saved


def load_monitor_state(monitor, state_dict) -> None:
    """monitor.load_state_dict(state_dict): checked whole, then applied."""
    state = state_entries(
        state_dict,
        "GradientMonitor",
        (
            "format",
            "settings",
            "names",
            "named",
            "last_step",
            "logged_findings",
            "findings",
            "actions",
            "history",
            "detectors",
        ),
    )
    if state["format"] not in READABLE or isinstance(state["format"], bool):
        raise ValueError(f"GradientMonitor state_dict: format {state['format']!r}; this gradguard reads {READABLE}")
    settings = monitor.settings.as_dict()
    if state["format"] < 2 and isinstance(state["settings"], dict):  # settings added since are at their defaults
        settings = {key: value for key, value in settings.items() if key in state["settings"]}
    if state["settings"] != settings:
        differ = sorted(
            key
            for key in set(settings) | set(state["settings"] or {})
            if (state["settings"] or {}).get(key) != settings.get(key)
        )
        raise ValueError(
            f"GradientMonitor state_dict: saved with other settings ({differ}); make the monitor with those"
        )
    names = state["names"]
    if names is not None and (not isinstance(names, list) or not all(isinstance(name, str) for name in names)):
        raise TypeError("GradientMonitor state_dict: names must be a list of strings or None")
    if names is not None and len(set(names)) != len(names):
        raise ValueError("GradientMonitor state_dict: names repeat")
    if monitor.names is not None and monitor._named and (names is None or names[: len(monitor.names)] != monitor.names):
        # (a saved monitor may have more layers: layers that joined after its first step)
        raise ValueError("GradientMonitor state_dict: saved for other layers than this monitor's names")
    if not isinstance(state["named"], bool):
        raise TypeError("GradientMonitor state_dict: named must be a bool")
    last_step = _integer(state["last_step"], "last_step", minimum=-1)
    logged = _integer(state["logged_findings"], "logged_findings", minimum=0)
    findings = [_finding(entry) for entry in _list(state["findings"], "findings")]
    if logged > len(findings):
        raise ValueError("GradientMonitor state_dict: more findings logged than kept")
    actions = [GuardAction.from_dict(entry) for entry in _list(state["actions"], "actions")]
    layers = None if names is None else len(names)
    history = (
        None if state["history"] is None else _history(state["history"], monitor.settings, layers, state["format"])
    )
    detectors = None if state["detectors"] is None else _states(state["detectors"], layers, state["format"])
    if (history is None) != (detectors is None) or (history is not None and names is None):
        raise ValueError("GradientMonitor state_dict: history, detectors and names come together (after a first step)")
    monitor.names, monitor._named, monitor._last_step = (
        (None if names is None else list(names)),
        state["named"],
        last_step,
    )
    monitor.findings, monitor.actions, monitor._logged_findings = findings, actions, logged
    monitor.recorded = history
    monitor._detectors = None
    if detectors is not None:
        from .detectors import Detectors

        monitor._detectors = Detectors(monitor.settings, monitor.names)
        monitor._detectors.states = detectors


def _integer(value, name, minimum):
    return positive_int(value, f"GradientMonitor state_dict: {name}", minimum=minimum)


def _list(value, name) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"GradientMonitor state_dict: {name} must be a list, not {type(value).__name__}")
    return list(value)


def _array(value, name, shape, dtype):
    try:
        array = np.array(value, dtype=dtype)
    except (TypeError, ValueError):
        raise TypeError(f"GradientMonitor state_dict: {name} must be numbers of shape {shape}") from None
    if array.shape != shape:
        raise ValueError(f"GradientMonitor state_dict: {name} has shape {array.shape}, {shape} expected")
    return array


def _finding(entry) -> Finding:
    entry = state_entries(entry, "GradientMonitor finding", ("step", "layer", "kind", "evidence", "message"))
    if not (isinstance(entry["layer"], str) and isinstance(entry["kind"], str) and isinstance(entry["message"], str)):
        raise TypeError("GradientMonitor state_dict: a finding's layer, kind and message are strings")
    if not isinstance(entry["evidence"], dict):
        raise TypeError("GradientMonitor state_dict: a finding's evidence is a dict")
    return Finding(
        _integer(entry["step"], "finding step", 0),
        entry["layer"],
        entry["kind"],
        dict(entry["evidence"]),
        entry["message"],
    )


def _history(saved, settings, layers, form) -> History:
    keys = ("count", "steps", "series", "baseline", "baseline_age", "baseline_kept")
    saved = state_entries(saved, "GradientMonitor history", keys + (("totals",) if form >= 2 else ()))
    if layers is None:
        raise ValueError("GradientMonitor state_dict: a history needs the layers' names")
    window = settings.window
    history = History(window, layers, settings.baseline_refresh, settings.min_history)
    history.count = _integer(saved["count"], "history count", 0)
    history.steps = _array(saved["steps"], "history steps", (window,), np.int64)
    series = state_entries(saved["series"], "GradientMonitor history series", SERIES)
    history.series = {name: _array(series[name], f"history {name}", (window, layers), np.float64) for name in SERIES}
    if form >= 2:
        totals = state_entries(saved["totals"], "GradientMonitor history totals", TOTALS)
        history.totals = {name: _array(totals[name], f"history {name}", (window,), np.float64) for name in TOTALS}
    kept = history.steps[history._kept()]
    if np.any(kept < 0) or np.any(np.diff(kept) <= 0):
        raise ValueError("GradientMonitor state_dict: the kept steps must be >= 0 and increasing")
    history._baseline_age = _integer(saved["baseline_age"], "baseline_age", 0)
    history._baseline_kept = _integer(saved["baseline_kept"], "baseline_kept", 0)
    if saved["baseline"] is not None:
        baseline = state_entries(saved["baseline"], "GradientMonitor baseline", ("count", "center", "spread"))
        spread = _array(baseline["spread"], "baseline spread", (layers,), np.float64)
        known = ~np.isnan(spread)  # NaN: a layer without history yet
        if not np.all(spread[known] > 0) or np.isinf(spread).any():
            raise ValueError("GradientMonitor state_dict: baseline spreads are finite and > 0 (NaN without history)")
        history._baseline = Baseline(
            _array(baseline["count"], "baseline count", (layers,), np.int64),
            _array(baseline["center"], "baseline center", (layers,), np.float64),
            spread,
        )
    return history


# What a format-1 state lacks: the sustained-growth detector's streaks and long-run levels (fresh on load).
_SINCE_FORMAT_2 = ("sustained", "reference", "loss")


def _states(saved, layers, form) -> LayerStates:
    if layers is None:
        raise ValueError("GradientMonitor state_dict: detector state needs the layers' names")
    keys = (*_STREAK_KINDS, "growth_streak", "exploding", "reference", "loss")
    if form < 2:
        keys = tuple(key for key in keys if key not in _SINCE_FORMAT_2)
    saved = state_entries(saved, "GradientMonitor detectors", keys)
    states = LayerStates(layers)
    for kind in (kind for kind in _STREAK_KINDS if kind in keys):
        streaks = state_entries(saved[kind], f"GradientMonitor {kind} streaks", _STREAK_FIELDS)
        setattr(
            states,
            kind,
            Streaks(
                *(_array(streaks[name], f"{kind} {name}", (layers,), np.int64) for name in _STREAK_FIELDS[:3]),
                _array(streaks["reported"], f"{kind} reported", (layers,), bool),
            ),
        )
    states.growth_streak = _array(saved["growth_streak"], "growth_streak", (layers,), np.int64)
    states.exploding = _array(saved["exploding"], "exploding", (layers,), bool)
    if "reference" in keys:
        states.reference = _array(saved["reference"], "reference", (layers,), np.float64)
    if "loss" in keys:
        loss = state_entries(saved["loss"], "GradientMonitor loss state", ("reported", "clear"))
        if not isinstance(loss["reported"], bool):
            raise TypeError("GradientMonitor state_dict: the loss state's reported is a bool")
        states.loss_reported, states.loss_clear = loss["reported"], _integer(loss["clear"], "loss clear", 0)
    return states
