"""The demo's pictures (matplotlib, optional): gradient flow at initialisation,
loss curves, RNN/LSTM gradient norm against time-step distance, and
convergence rate by depth. Each function draws from the records alone and
returns the path it wrote, or None when its experiment was not run."""

from __future__ import annotations

import numpy as np

from ..plot import blank_figure
from .experiments import ARCHITECTURE_LABELS, EXPLODING_LENGTH, INIT_DEPTH
from .summary import find, groups

# log10 of a gradient norm is shown within these bounds: one sigmoid network at
# 1e-34 must not squash every other row into one colour.
LOG_FLOOR, LOG_CEILING = -12.0, 2.0


def _demo_figure(width, height):
    return blank_figure(width, height, dpi=110)


def _steps(group):
    """Steps the shortest run of a group took (a diverged run stops early)."""
    return min(r.get("steps_run", r["steps"]) for r in group.records)


def _median_rows(group_list, key):
    """Per group, the element-wise median over seeds of a per-layer (or per-step) list."""
    rows = []
    for group in group_list:
        series = [r[key] for r in group.records if r.get(key)]
        length = min(len(s) for s in series)
        values = np.array([[np.nan if v is None else v for v in s[:length]] for s in series], dtype=np.float64)
        rows.append(np.nanmedian(values, axis=0) if len(values) else np.full(length, np.nan))
    return rows


def _heatmap(axes, figure, rows, labels, title):
    width = max(len(r) for r in rows)
    grid = np.full((len(rows), width), np.nan)
    for index, row in enumerate(rows):
        with np.errstate(divide="ignore"):
            grid[index, : len(row)] = np.log10(np.maximum(row, 1e-300))
    image = axes.imshow(
        np.clip(grid, LOG_FLOOR, LOG_CEILING), aspect="auto", cmap="viridis", vmin=LOG_FLOOR, vmax=LOG_CEILING
    )
    axes.set_yticks(range(len(labels)))
    axes.set_yticklabels(labels, fontsize=7)
    axes.set_xlabel("layer (input side first; the last column is the output layer)")
    axes.set_title(title, fontsize=9)
    bar = figure.colorbar(image, ax=axes, extend="both")
    bar.set_label(f"log10 ||dL/dW|| (clipped to [{LOG_FLOOR:g}, {LOG_CEILING:g}])", fontsize=7)


def _panels(out, name, panels, height):
    """One figure with a row per panel (a function drawing on an axes); None without panels."""
    if not panels:
        return None
    figure = _demo_figure(11, height * len(panels))
    for row, draw in enumerate(panels, start=1):
        draw(figure, figure.add_subplot(len(panels), 1, row))
    figure.tight_layout()
    path = out / name
    figure.savefig(path)
    return path


def _over_steps(group_list, key, title, ylabel):
    """A panel: each group's median per-step curve (diverged runs end early) on a log axis."""

    def draw(figure, axes):
        for group, curve in zip(group_list, _median_rows(group_list, key)):
            axes.plot(np.linspace(0, _steps(group), len(curve)), curve, label=group.config, linewidth=1.2)
        axes.set_yscale("log")
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=7)

    return draw


def _deepest(group_list):
    deepest = max(g.size for g in group_list)
    return deepest, [g for g in group_list if g.size == deepest]


def gradient_flow(records, out):
    all_groups = groups(records)
    init_groups = find(all_groups, "init")
    depth_groups = find(all_groups, "depth", optimiser="adam") or find(all_groups, "depth")
    panels = []
    if init_groups:
        title = f"Gradient norm per layer at initialisation, depth {INIT_DEPTH}, median over seeds"
        rows = _median_rows(init_groups, "init_grad_norms")
        labels = [g.config for g in init_groups]
        panels.append(lambda figure, axes: _heatmap(axes, figure, rows, labels, title))
    if depth_groups:
        deepest, chosen = _deepest(depth_groups)
        deep_title = f"Gradient norm per layer at initialisation, depth {deepest}, ReLU + He"
        deep_rows = _median_rows(chosen, "init_grad_norms")
        deep_labels = [g.config for g in chosen]
        panels.append(lambda figure, axes: _heatmap(axes, figure, deep_rows, deep_labels, deep_title))
    return _panels(out, "gradient_flow_at_init.png", panels, 4.5)


def loss_curves(records, out):
    all_groups = groups(records)
    high_lr = find(all_groups, "high_lr")
    depth_groups = find(all_groups, "depth", optimiser="adam")
    panels = []
    if high_lr:
        title = f"Too high a learning rate: training loss, median over seeds (depth {high_lr[0].size})"
        panels.append(_over_steps(high_lr, "loss_curve", title, "training loss"))
    if depth_groups:
        deepest, chosen = _deepest(depth_groups)
        title = f"Depth {deepest}, Adam: training loss, median over seeds"
        panels.append(_over_steps(chosen, "loss_curve", title, "training loss"))
    return _panels(out, "loss_curves.png", panels, 4)


def _by_distance(recurrent):
    def draw(figure, axes):
        for group, curve in zip(recurrent, _median_rows(recurrent, "grad_norm_by_distance")):
            style = "-" if group.config == "LSTM" else "--"
            axes.plot(range(len(curve)), curve / curve[0], style, label=f"{group.config}, length {group.size}")
        axes.set_yscale("log")
        axes.set_xlabel("distance in time steps from the output (T - t)")
        axes.set_ylabel("||dL/dx_t|| / ||dL/dx_T||")
        axes.set_title("Gradient reaching the input t steps back, at initialisation, median over seeds", fontsize=9)
        axes.legend(fontsize=7, ncol=2)

    return draw


def recurrent_gradients(records, out):
    all_groups = groups(records)
    recurrent = find(all_groups, "recurrent")
    exploding = find(all_groups, "exploding")
    panels = [_by_distance(recurrent)] if recurrent else []
    if exploding:
        title = (
            f"Exploding RNN (length {EXPLODING_LENGTH}): gradient norm during training, median over seeds "
            "(a diverged run ends its line)"
        )
        panels.append(_over_steps(exploding, "grad_norm_curve", title, "global gradient norm before clipping"))
    return _panels(out, "rnn_gradient_by_distance.png", panels, 4)


def convergence_by_depth(records, out):
    all_groups = groups(records)
    depth_groups = find(all_groups, "depth")
    if not depth_groups:
        return None
    optimisers = list(dict.fromkeys(g.optimiser for g in depth_groups))
    depths = sorted({g.size for g in depth_groups})
    labels = [label for label in ARCHITECTURE_LABELS.values() if find(all_groups, "depth", label)]
    figure = _demo_figure(11, 3.6 * len(optimisers))
    for row, optimiser in enumerate(optimisers, start=1):
        axes = figure.add_subplot(len(optimisers), 1, row)
        width = 0.8 / len(depths)
        for offset, depth in enumerate(depths):
            rates = []
            for label in labels:
                chosen = find(all_groups, "depth", label, depth, optimiser)
                rates.append(chosen[0].rate if chosen else np.nan)
            positions = np.arange(len(labels)) + (offset - (len(depths) - 1) / 2) * width
            axes.bar(positions, rates, width, label=f"depth {depth}")
        axes.set_xticks(range(len(labels)))
        axes.set_xticklabels(labels, fontsize=7)
        axes.set_ylim(0, 1.05)
        axes.set_ylabel("fraction of seeds converged")
        name = {"sgd": "SGD with momentum", "adam": "Adam"}.get(optimiser, optimiser)
        axes.set_title(f"Convergence rate by depth and architecture, {name}", fontsize=9)
        axes.legend(fontsize=7)
    figure.tight_layout()
    path = out / "convergence_by_depth.png"
    figure.savefig(path)
    return path


def draw_all(records, out):
    """Every picture the records allow; [] without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    paths = [draw(records, out) for draw in (gradient_flow, loss_curves, recurrent_gradients, convergence_by_depth)]
    return [p for p in paths if p is not None]
