"""Where the monitor's records go: a text report, a flat dict for any logger
(wandb, the trainers' loggers), TensorBoard, CSV and JSON lines."""

from __future__ import annotations

import csv
import json

import numpy as np

from .history import SERIES, clipped

__all__ = ["text_report", "latest", "clip_line", "log_to", "to_csv", "to_jsonl", "LOGGED"]

# The kept series that latest() and log_to() publish, and their tag prefixes.
LOGGED = (
    ("norm", "grad_norm"),
    ("abs_mean", "grad_abs_mean"),
    ("std", "grad_std"),
    ("zero_fraction", "grad_zero_fraction"),
    ("update_ratio", "update_ratio"),
)


def text_report(monitor):
    """A per-layer table: current norm, trend over the kept window, current findings."""
    if monitor.recorded is None:
        return "GradientMonitor: no step recorded yet"
    data = monitor.history()
    flagged = monitor.summary()["flagged"]
    width = max(12, max(len(n) for n in monitor.names))
    lines = [clip_line(monitor), ""]
    lines.append(f"{'layer':<{width}}  {'norm':>10}  {'trend':>8}  findings")
    for index, layer in enumerate(monitor.names):
        column = data["norm"][:, index]
        finite = column[np.isfinite(column) & (column > 0)]
        current = column[-1]
        trend = ""
        if finite.size >= 4:
            half = finite.size // 2
            change = np.log10(np.median(finite[half:]) / np.median(finite[:half]))
            trend = f"{change:+.1f} dec"
        lines.append(f"{layer:<{width}}  {current:>10.3g}  {trend:>8}  {', '.join(flagged.get(layer, [])) or '-'}")
    if monitor.actions:
        lines.append("")
        lines.append("actions taken:")
        lines.extend(f"  step {a.step}: {a.action} ({a.cause}) {a.detail}" for a in monitor.actions)
    return "\n".join(lines)


def latest(monitor):
    """The last recorded step as one flat dict, for wandb.log or any logger:

        {"grad_norm/<layer>": ..., "grad_abs_mean/<layer>": ..., "grad_std/<layer>": ...,
         "grad_zero_fraction/<layer>": ..., "update_ratio/<layer>": ...,
         "gradguard/step": ..., "gradguard/findings": findings so far,
         "gradguard/flagged_layers": layers flagged now,
         "gradguard/grad_norm_before_clip": the global L2 norm the monitor read,
         "gradguard/grad_norm_after_clip": the global norm after the step's clip,
         "gradguard/clipped": 1.0 when the clip scaled the gradients, else 0.0,
         "gradguard/clip_rate": clipped steps / steps with a known clip, over the window}

    Values a step did not have (an absent layer, an update ratio without a
    StepReport, the after-clip values of a step whose clip the caller did
    not give) are left out rather than logged as NaN; a non-finite global
    norm is logged as it is. {} before any step."""
    recorded = monitor.recorded
    if recorded is None or recorded.count == 0:
        return {}
    row = recorded.last_row()
    flat = {}
    for series, prefix in LOGGED:
        values = recorded.series[series][row]
        for layer, value in zip(monitor.names, values):
            if not np.isnan(value):
                flat[f"{prefix}/{layer}"] = float(value)
    flat["gradguard/step"] = int(recorded.steps[row])
    flat["gradguard/findings"] = len(monitor.findings)
    flat["gradguard/flagged_layers"] = len(monitor.summary()["flagged"])
    before, after = recorded.totals["grad_norm"][row], recorded.totals["norm_after_clip"][row]
    flat["gradguard/grad_norm_before_clip"] = float(before)
    if not np.isnan(after):
        flat["gradguard/grad_norm_after_clip"] = float(after)
        flat["gradguard/clipped"] = float(clipped(before, after))
        flat["gradguard/clip_rate"] = recorded.clip_rate()
    return flat


def clip_line(monitor):
    """One line on the last step's global norm before and after its clip and
    the clip rate over the window (what clip-rate logs in Optax's and HF's
    recipes track), or '' before any step."""
    recorded = monitor.recorded
    if recorded is None or recorded.count == 0:
        return ""
    row = recorded.last_row()
    before, after = recorded.totals["grad_norm"][row], recorded.totals["norm_after_clip"][row]
    line = f"global grad norm at step {int(recorded.steps[row])}: {before:.4g} before clipping"
    if np.isnan(after):
        return line + " (clip not known to the monitor)"
    kept = min(recorded.count, recorded.window)
    state = "clipped" if clipped(before, after) else "not clipped"
    return line + f", {after:.4g} after ({state}); clip rate {recorded.clip_rate():.1%} over the last {kept} steps"


def log_to(monitor, writer, step=None, since=0):
    """Write the last step to a TensorBoard SummaryWriter (torch.utils.tensorboard
    or tensorboardX; anything with add_scalar(tag, value, global_step) and
    add_text(tag, text, global_step)): every value of latest() as a scalar,
    and the findings from index `since` on as one text entry; returns the findings' count.
    step: the global step to log at (default: the monitor's last step)."""
    flat = monitor.latest()
    if not flat:
        return since
    global_step = flat["gradguard/step"] if step is None else int(step)
    for tag, value in flat.items():
        if tag != "gradguard/step":
            writer.add_scalar(tag, value, global_step)
    new = monitor.findings[since:]
    if new:
        writer.add_text("gradguard/findings", "\n\n".join(f.message for f in new), global_step)
    return len(monitor.findings)


def to_csv(monitor, path):
    """The kept window, one row per step and layer."""
    data = monitor.history()
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "layer"] + list(SERIES))
        for row, step in enumerate(data["step"]):
            for index, layer in enumerate(monitor.names):
                writer.writerow([int(step), layer] + [repr(float(data[name][row, index])) for name in SERIES])


def to_jsonl(monitor, path):
    """The findings, one JSON object a line."""
    with open(path, "w") as handle:
        for finding in monitor.findings:
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
