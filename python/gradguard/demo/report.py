"""The demo's outputs: results.json (one record per run), report.md (tables,
pictures, verdicts, readable on its own) and the text printed at the end."""

from __future__ import annotations

import json
import platform

from .. import __version__
from ..config import simd_target
from .experiments import (
    BATCH,
    CONVERGED_ACCURACY,
    EXPERIMENTS,
    EXPLODING_LENGTH,
    EXPLODING_LR,
    EXPLODING_RADIUS,
    HIDDEN_UNITS,
    HIGH_LR,
    HIGH_LR_DEPTH,
    INIT_DEPTH,
    OPTIMISERS,
    SEQUENCE_BATCH,
    SOLVED_MSE,
    WIDTH,
)
from .summary import format_markdown, format_text, groups, table, verdicts

# Each picture goes under the first experiment (in this order) that was run and draws it.
FIGURES = {
    "init": [
        (
            "gradient_flow_at_init.png",
            "Gradient norm per layer at initialisation (log scale, clipped so that one vanishing network does "
            "not flatten the others); the second panel is the depth experiment's deepest networks.",
        )
    ],
    "depth": [
        ("gradient_flow_at_init.png", "Gradient norm per layer at initialisation, deepest networks."),
        ("convergence_by_depth.png", "Fraction of seeds converged, by depth and architecture."),
    ],
    "recurrent": [
        (
            "rnn_gradient_by_distance.png",
            "Top: how much of the loss gradient reaches the input t steps back, at initialisation (RNN dashed, "
            "LSTM solid). Bottom: the exploding RNN's gradient norm without and with clipping.",
        )
    ],
    "exploding": [("rnn_gradient_by_distance.png", "The exploding RNN's gradient norm without and with clipping.")],
    "high_lr": [
        (
            "loss_curves.png",
            "Training loss, median over seeds: too high a learning rate without and with each kind of clipping "
            "(and the deepest networks with Adam).",
        )
    ],
}


def describe(settings):
    """What each experiment runs, in words (the report's text under each heading)."""
    sgd_lr, adam_lr = OPTIMISERS["sgd"][1], OPTIMISERS["adam"][1]
    return {
        "init": (
            f"Plain networks of {INIT_DEPTH} hidden layers of width {WIDTH} on two spirals (batch {BATCH}), "
            f"SGD with momentum 0.9 at lr {sgd_lr:g}, global-norm clip 1, {settings.steps} steps. "
            "The ratio is the gradient norm of the first square hidden layer over the last one at step 0; "
            "the first flag is gg.GradientMonitor's first vanishing/exploding finding."
        ),
        "depth": (
            f"ReLU networks of width {WIDTH}, He initialisation, at depths {', '.join(map(str, settings.depths))}; "
            f"SGD with momentum 0.9 at lr {sgd_lr:g} and Adam at lr {adam_lr:g}, both clipping at global norm 1, "
            f"{settings.steps} steps. Pre-LN blocks are h + W relu(LN(h)) + b with W scaled by 1/sqrt(L); "
            "highway layers h + T (relu(W h + b) - h), T = sigmoid(G h + c), c = -2 at init; the layer- and "
            "batch-norm networks normalise z before the ReLU in every hidden-to-hidden layer."
        ),
        "recurrent": (
            f"The adding problem at lengths {', '.join(map(str, settings.lengths))} (solved: test MSE <= "
            f"{SOLVED_MSE:g}; predicting the mean scores 1/6 = 0.167); {HIDDEN_UNITS} hidden units, batch "
            f"{SEQUENCE_BATCH}, Adam at lr 0.01 with global-norm clip 1, {settings.sequence_steps} steps. "
            "Forward and backpropagation through time in NumPy (checked against finite differences in the "
            "test suite)."
        ),
        "exploding": (
            f"A tanh RNN whose recurrent matrix is orthogonal times {EXPLODING_RADIUS:g} (every eigenvalue has "
            f"modulus {EXPLODING_RADIUS:g}) on the adding problem of length {EXPLODING_LENGTH}, plain SGD at lr "
            f"{EXPLODING_LR:g}, without and with clipping at global norm 1. The max grad norm is the largest "
            "pre-clip norm seen."
        ),
        "high_lr": (
            f"The plain ReLU + He network of depth {HIGH_LR_DEPTH} with SGD (momentum 0.9) at lr {HIGH_LR:g}, "
            f"five times the rate the other experiments use, {settings.steps} steps: no clipping, clipping at "
            "global norm 1 (fused into the step), ZClip's adaptive threshold, and gg.Guard (ZClip, skipping "
            "non-finite steps, learning-rate backoff after repeated spikes, restoring a snapshot every 25 steps)."
        ),
    }


def header_facts(settings, elapsed, jobs):
    return {
        "gradguard": __version__,
        "simd_target": simd_target(),
        "machine": f"{platform.machine()}, {jobs} worker process(es)",
        "python": platform.python_version(),
        "seeds": list(settings.seeds),
        "elapsed_s": round(elapsed, 1),
    }


def write_results(path, settings, records, facts, command):
    document = {
        **facts,
        "command": command,
        "settings": {
            "seeds": list(settings.seeds),
            "steps": settings.steps,
            "sequence_steps": settings.sequence_steps,
            "depths": list(settings.depths),
            "lengths": list(settings.lengths),
            "converged_accuracy": CONVERGED_ACCURACY,
            "solved_mse": SOLVED_MSE,
        },
        "runs": records,
    }
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")


def _verdict_lines(found, markdown):
    lines = []
    for verdict in found:
        if markdown:
            lines.append(f"- **{verdict.verdict}**: {verdict.claim}  \n  {verdict.evidence}")
        else:
            lines.append(f"- {verdict.verdict.upper()}: {verdict.claim}\n    {verdict.evidence}")
    return lines


def text_summary(records):
    """The tables and verdicts as printed to the terminal."""
    all_groups = groups(records)
    present = list(dict.fromkeys(r["experiment"] for r in records))
    parts = []
    for key in present:
        parts.append(f"== {EXPERIMENTS[key][0]} ==")
        parts.append(format_text(*table(all_groups, key)))
        parts.append("")
    parts.append("== The claims, as this run measured them ==")
    parts.extend(_verdict_lines(verdicts(records), markdown=False))
    return "\n".join(parts)


def write_report(path, settings, records, facts, command, figures):
    all_groups = groups(records)
    present = list(dict.fromkeys(r["experiment"] for r in records))
    written = {p.name for p in figures}
    text = describe(settings)
    found = verdicts(records)
    lines = [
        "# gradguard demo: vanishing and exploding gradients, and their remedies",
        "",
        f"`{command}` — gradguard {facts['gradguard']}, SIMD target {facts['simd_target']}, "
        f"{facts['machine']}, Python {facts['python']}; seeds {', '.join(map(str, settings.seeds))}; "
        f"{len(records)} runs in {facts['elapsed_s']} s.",
        "",
        "Every number below was measured by this run. Each configuration runs once per seed; a seed fixes the "
        "data, the initialisation and the batches, so configurations are compared on the same data. Tables give "
        "the median and the range [min-max] over seeds, and how many runs converged (spirals: test accuracy >= "
        f"{CONVERGED_ACCURACY:g}; adding problem: test MSE <= {SOLVED_MSE:g}) or diverged (a non-finite loss or "
        "weight). Diverged runs are left out of the accuracy and loss ranges.",
        "",
        "## The claims, as this run measured them",
        "",
        "A verdict comes from a fixed rule over the seeds: a configuration trains when at least 80% of its runs "
        "converge and fails when at most 20% do.",
        "",
        *_verdict_lines(found, markdown=True),
        "",
    ]
    shown = set()
    for key in present:
        lines += [f"## {EXPERIMENTS[key][0]}", "", text[key], "", format_markdown(*table(all_groups, key)), ""]
        for name, caption in FIGURES[key]:
            if name in written and name not in shown:
                shown.add(name)
                lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")
