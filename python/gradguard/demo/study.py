"""`gradguard demo`: deep fully connected networks trained on two spirals at
several depths, one configuration per classic remedy for vanishing/exploding
gradients, measured with gradguard's own pieces (gg.init, gg.layer_norm,
gg.optim.SGD with max_grad_norm, gg.GradientMonitor). Every number printed is
measured in this run."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import init
from ..monitor import GradientMonitor
from ..optim import SGD
from .mlp import MLP, two_spirals


@dataclass(frozen=True)
class Config:
    name: str
    activation: str
    init: str  # "normal0.01", "xavier", "he", "orthogonal", "lsuv"
    lr: float
    residual: bool = False
    layer_norm: bool = False
    max_grad_norm: float = None


CONFIGS = [
    Config("sigmoid + N(0, 0.01)", "sigmoid", "normal0.01", 0.1),
    Config("tanh + Xavier", "tanh", "xavier", 0.1),
    Config("ReLU + He", "relu", "he", 0.05),
    Config("ReLU + orthogonal", "relu", "orthogonal", 0.05),
    Config("ReLU + He + residual", "relu", "he", 0.05, residual=True),
    Config("ReLU + He/sqrt(L) + residual", "relu", "he_scaled", 0.01, residual=True),
    Config("ReLU + He + layer norm", "relu", "he", 0.05, layer_norm=True),
    Config("tanh + LSUV", "tanh", "lsuv", 0.1),
    Config("ReLU + He, lr 0.5", "relu", "he", 0.5),
    Config("ReLU + He, lr 0.5 + clip 1", "relu", "he", 0.5, max_grad_norm=1.0),
]


def build(config, depth, width, rng, data):
    net = MLP([2] + [width] * depth + [2], config.activation, config.residual, config.layer_norm)
    net.initialise("orthogonal" if config.init == "lsuv" else config.init, rng, depth)
    if config.init == "lsuv":
        init.lsuv_(net.weights[:-1], net.pre_activations, data[:512], orthogonal_start=False, rng=rng)
    return net


def train(config, depth, args, data, progress):
    rng = np.random.default_rng(args.seed)
    (train_x, train_y), (test_x, test_y) = data
    net = build(config, depth, args.width, rng, train_x)
    params = net.parameters()
    optimizer = SGD(params, lr=config.lr, max_grad_norm=config.max_grad_norm)
    monitor = GradientMonitor(names=[n for n in params if n.endswith("weight")], window=128)
    losses, first_finding, ratio = [], None, math.nan
    for step in range(args.steps):
        batch = rng.integers(0, len(train_x), args.batch)
        loss, _, grads = net.loss_and_gradients(train_x[batch], train_y[batch])
        weight_grads = {n: g for n, g in grads.items() if n.endswith("weight")}
        if step == 0:
            norms = [float(np.linalg.norm(g)) for g in weight_grads.values()]
            ratio = norms[0] / norms[-2] if norms[-2] > 0 else math.inf  # first vs last hidden layer
            first_layer_norms = norms
        findings = monitor.update(weight_grads, params={n: params[n] for n in weight_grads}, step=step)
        for finding in findings:
            if first_finding is None and finding.kind in ("vanishing", "exploding"):
                first_finding = finding
        losses.append(loss)
        if not math.isfinite(loss):
            losses.extend([math.nan] * (args.steps - step - 1))
            break
        optimizer.step(grads)
        progress()
    accuracy = net.evaluate(test_x, test_y) if math.isfinite(losses[-1]) else math.nan
    tail = [l for l in losses[-20:] if math.isfinite(l)]
    return {
        "config": config.name,
        "depth": depth,
        "ratio": ratio,
        "finding": first_finding,
        "final_loss": float(np.mean(tail)) if len(tail) == min(20, len(losses)) else math.nan,
        "accuracy": accuracy,
        "losses": losses,
        "init_norms": first_layer_norms,
    }


def format_results(results):
    lines = [
        f"{'configuration':<28}{'depth':>6}{'|g1|/|gL| at init':>19}  {'first vanishing/exploding flag':<44}"
        f"{'final loss':>11}{'test acc':>9}"
    ]
    for r in results:
        finding = r["finding"]
        flag = f"step {finding.step}: {finding.kind} ({finding.layer.split('.')[0]})" if finding else "none"
        lines.append(
            f"{r['config']:<28}{r['depth']:>6}{r['ratio']:>19.3g}  {flag:<44}"
            f"{r['final_loss']:>11.3f}{r['accuracy']:>9.3f}"
        )
    return "\n".join(lines)


def plot(results, out, depths):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install matplotlib)", file=sys.stderr)
        return []
    written = []
    figure = Figure(figsize=(6 * len(depths), 5), dpi=100)
    for column, depth in enumerate(depths):
        axes = figure.add_subplot(1, len(depths), column + 1)
        for r in results:
            if r["depth"] == depth and "lr 0.5" not in r["config"]:
                axes.plot(
                    range(len(r["init_norms"])), np.maximum(r["init_norms"], 1e-300), label=r["config"], linewidth=1
                )
        axes.set_yscale("log")
        axes.set_xlabel("layer (input side first)")
        axes.set_ylabel("||dL/dW|| at initialisation")
        axes.set_title(f"gradient flow at init, depth {depth}")
        if column == 0:
            axes.legend(fontsize=7)
    figure.tight_layout()
    path = out / "gradient_flow_at_init.png"
    figure.savefig(path)
    written.append(path)
    figure = Figure(figsize=(6 * len(depths), 4), dpi=100)
    for column, depth in enumerate(depths):
        axes = figure.add_subplot(1, len(depths), column + 1)
        for r in results:
            if r["depth"] == depth and "lr 0.5" in r["config"]:
                axes.plot(r["losses"], label=r["config"], linewidth=1)
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("training loss")
        axes.set_title(f"lr 0.5 with and without clipping, depth {depth}")
        axes.legend(fontsize=7)
    figure.tight_layout()
    path = out / "loss_with_and_without_clipping.png"
    figure.savefig(path)
    written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gradguard demo", description=__doc__)
    parser.add_argument("--depths", type=int, nargs="+", default=[10, 50, 100], help="hidden layers of each network")
    parser.add_argument("--steps", type=int, default=300, help="SGD steps per run")
    parser.add_argument("--width", type=int, default=32, help="units per hidden layer")
    parser.add_argument("--batch", type=int, default=128, help="examples per step")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and batches")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=None,
        metavar="N",
        help="configurations to run, by number: " + "; ".join(f"{i}: {c.name}" for i, c in enumerate(CONFIGS)),
    )
    parser.add_argument("--out", type=Path, default=Path("gradguard-out"), help="folder for the PNG plots")
    args = parser.parse_args(argv)
    chosen = CONFIGS if args.configs is None else [CONFIGS[int(i)] for i in args.configs]
    x, y = two_spirals(4000, seed=args.seed)
    data = ((x[:3000], y[:3000]), (x[3000:], y[3000:]))
    total = len(chosen) * len(args.depths) * args.steps
    done = [0]
    started = time.perf_counter()

    def progress():
        done[0] += 1
        if done[0] % 20 == 0 or done[0] == total:
            bar = int(40 * done[0] / total)
            print(
                f"\r[{'#' * bar}{'.' * (40 - bar)}] {done[0]}/{total} steps, {time.perf_counter() - started:.0f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )

    results = []
    for config in chosen:
        for depth in args.depths:
            before = done[0]
            results.append(train(config, depth, args, data, progress))
            done[0] = before + args.steps  # a run that diverged stops early
    print(file=sys.stderr)
    print(format_results(results))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in plot(results, args.out, args.depths):
        print(f"wrote {path}")
    print(f"{len(results)} runs in {time.perf_counter() - started:.1f} s")
    return 0
