"""Pictures of gradient health, written to PNG (matplotlib, an optional extra:
pip install "gradguard[plot]"). Figures are built with matplotlib's object API,
so no GUI backend is needed."""

from __future__ import annotations

import numpy as np

from ._arguments import as_array_list

__all__ = ["gradient_flow", "norm_lines", "gradient_histogram", "blank_figure"]


def blank_figure(width, height, dpi=100):
    """A matplotlib Figure of width x height inches (the object API: no GUI backend),
    or an ImportError that says how to get matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("gradguard.plot needs matplotlib: pip install matplotlib") from None
    return Figure(figsize=(width, height), dpi=dpi)


def _history_of(source):
    return source.history() if hasattr(source, "history") else source


def gradient_flow(source, path, findings=None, title="gradient flow: log10 ||g|| per layer and step"):
    """Heatmap of log10 gradient norms, layers (rows) x steps (columns), with
    findings marked. source: a GradientMonitor or its history() dict; findings
    default to the monitor's. Writes a 1000x600 PNG to path and returns path."""
    history = _history_of(source)
    if findings is None:
        findings = getattr(source, "findings", [])
    norms = np.asarray(history["norm"], dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        image = np.log10(norms)
    figure = blank_figure(10, 6)
    axes = figure.add_subplot()
    steps = np.asarray(history["step"])
    extent = (steps[0] - 0.5, steps[-1] + 0.5, len(history["layers"]) - 0.5, -0.5) if steps.size else None
    shown = axes.imshow(
        np.ma.masked_invalid(image), aspect="auto", interpolation="nearest", cmap="viridis", extent=extent
    )
    figure.colorbar(shown, ax=axes, label="log10 gradient norm")
    layers = list(history["layers"])
    markers = {"vanishing": "v", "exploding": "^", "dead": "x", "update_ratio": "s"}
    for kind, marker in markers.items():
        points = [(f.step, layers.index(f.layer)) for f in findings if f.kind == kind and f.layer in layers]
        if points:
            xs, ys = zip(*points)
            axes.scatter(xs, ys, marker=marker, color="red", s=40, label=kind)
    if any(True for f in findings if f.layer in layers):
        axes.legend(loc="upper right", fontsize=8)
    axes.set_xlabel("step")
    axes.set_ylabel("layer")
    if len(layers) <= 40:
        axes.set_yticks(range(len(layers)), layers, fontsize=7)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    return path


def norm_lines(source, path, layers=None, title="gradient norm per layer"):
    """One line per layer: gradient norm against step, log scale. Writes a
    1000x600 PNG and returns path."""
    history = _history_of(source)
    names = list(history["layers"])
    chosen = names if layers is None else [name for name in layers if name in names]
    figure = blank_figure(10, 6)
    axes = figure.add_subplot()
    for name in chosen:
        axes.plot(history["step"], history["norm"][:, names.index(name)], label=name, linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("||g||")
    axes.set_title(title)
    if len(chosen) <= 12:
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def gradient_histogram(grads, path, bins=100, sample=1_000_000, seed=0, title="distribution of one step's gradients"):
    """Histogram of log10 |g| over all gradients of one step (a uniform sample of
    at most `sample` values), exact zeros and non-finite values counted in the
    title. Writes an 800x500 PNG and returns path."""
    array_list, _ = as_array_list(grads, "grads")
    values = (
        np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in array_list]) if array_list else np.zeros(0)
    )
    zeros = int(np.count_nonzero(values == 0))
    nonfinite = int(np.count_nonzero(~np.isfinite(values)))
    magnitudes = np.abs(values[np.isfinite(values) & (values != 0)])
    if magnitudes.size > sample:
        magnitudes = np.random.default_rng(seed).choice(magnitudes, sample, replace=False)
    figure = blank_figure(8, 5)
    axes = figure.add_subplot()
    if magnitudes.size:
        axes.hist(np.log10(magnitudes), bins=bins, color="tab:blue")
    axes.set_xlabel("log10 |g|")
    axes.set_ylabel("count")
    axes.set_title(f"{title}\n{values.size} values, {zeros} exact zeros, {nonfinite} NaN/inf")
    figure.tight_layout()
    figure.savefig(path)
    return path
