"""What the watcher leaves in its folder at exit: report.md, findings.jsonl and
one gradient-flow PNG per optimiser (history.jsonl is written as steps happen)."""

from __future__ import annotations

import json
import os
import re

__all__ = ["write"]


def _slug(label):
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower()


def _picture(recorder, path):
    """The gradient-flow heatmap, or why there is none."""
    if recorder.monitor.recorded is None:
        return None, "no step recorded"
    try:
        from ..plot import gradient_flow

        gradient_flow(recorder.monitor, path)
    except ImportError as error:
        return None, str(error)
    return os.path.basename(path), None


def write(watcher, exit_code, command) -> str:
    """Write the report, the findings and the pictures; returns report.md's path."""
    lines = ["# gradguard watch", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    if exit_code is not None:
        lines += [f"Exit status of the script: {exit_code}", ""]
    if watcher.world_size > 1:
        lines += [f"Rank {watcher.rank} of {watcher.world_size}: this rank's gradients as it saw them.", ""]
    if not watcher.recorders:
        lines += [
            "The script never stepped a `torch.optim` optimizer, so nothing was monitored: gradguard watch "
            "records gradients at `torch.optim.Optimizer.step` (through torch's global optimizer hooks).",
            "",
        ]
    findings_path = os.path.join(watcher.out, "findings.jsonl")
    with open(findings_path, "w") as handle:
        for label, _, recorder in watcher.recorders:
            for finding in recorder.monitor.findings:
                entry = {
                    "optimizer": label,
                    "step": finding.step,
                    "layer": finding.layer,
                    "kind": finding.kind,
                    "evidence": finding.evidence,
                    "message": finding.message,
                }
                handle.write(json.dumps(entry, default=float) + "\n")
    for label, _, recorder in watcher.recorders:
        monitor = recorder.monitor
        summary = monitor.summary()
        lines += [f"## {label}", ""]
        lines.append(
            f"{recorder.recorded} steps recorded of {recorder.step} "
            f"({len(monitor.names)} parameters"
            + (f"; one step in {recorder.every} recorded" if recorder.every > 1 else "")
            + (f"; {recorder.scaler_skips} skipped by the GradScaler (overflow)" if recorder.scaler_skips else "")
            + (f"; {recorder.guard_skips} skipped by --skip-nonfinite" if recorder.guard_skips else "")
            + ")."
        )
        lines.append("")
        if monitor.findings:
            lines += ["| step | layer | kind | what and what to do |", "|---:|---|---|---|"]
            for finding in monitor.findings:
                lines.append(
                    f"| {finding.step} | `{finding.layer}` | {finding.kind} | {finding.message.replace('|', '/')} |"
                )
        else:
            lines.append("No findings: no layer's gradients vanished, exploded or died.")
        lines.append("")
        if summary["flagged"]:
            lines += [
                "Flagged at the end: " + ", ".join(f"`{k}` ({', '.join(v)})" for k, v in summary["flagged"].items()),
                "",
            ]
        picture, why = _picture(recorder, os.path.join(watcher.out, f"gradient_flow_{_slug(label)}.png"))
        if picture:
            lines += [f"![gradient flow]({picture})", ""]
        elif why:
            lines += [f"(No gradient-flow picture: {why}.)", ""]
        lines += ["```", monitor.report(), "```", ""]
    path = os.path.join(watcher.out, "report.md")
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path
