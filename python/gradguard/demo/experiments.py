"""The demo's experiments: what each run is, and how one run trains.

Every run is a `Run` (a frozen, picklable description); `execute(run)` trains
it from its seed alone and returns one JSON-ready record, so runs can go to
worker processes in any order and still give the same numbers. Each seed fixes
the data, the initialisation and the batches; two configurations with the
same seed see the same data in the same order (a paired comparison).

All networks are built from gradguard's own pieces: gg.init (and gg.init.lsuv_),
gg.layer_norm (layer and batch norm), gg.optim with max_grad_norm (clipping
fused into the step), gg.ZClip, gg.Guard and gg.GradientMonitor."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from .. import init
from ..adaptive import ZClip
from ..clip import global_norm
from ..guard import Guard
from ..models import MLP, Recurrent, adding_problem, two_spirals
from ..monitor import GradientMonitor
from ..optim import SGD, Adam

CONVERGED_ACCURACY = 0.9  # test accuracy at which a spirals run counts as converged
SOLVED_MSE = 0.01  # test MSE at which an adding-problem run counts as solved (predicting 1 scores 1/6)
WIDTH, BATCH, SPIRAL_POINTS, TEST_POINTS = 32, 64, 4000, 1000
HIDDEN_UNITS, SEQUENCE_BATCH, SEQUENCE_TEST = 32, 64, 512
CURVE_POINTS = 100  # loss curves are kept at this many points at most

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
INITIALISERS = ("normal0.01", "xavier", "he", "orthogonal", "lsuv")
ARCHITECTURE_LABELS = {
    "plain": "plain",
    "residual": "residual (post-activation)",
    "preln": "pre-LN residual, 1/sqrt(L)",
    "highway": "highway (gate bias -2)",
    "layer_norm": "layer norm, no residual",
    "batch_norm": "batch norm, no residual",
}
# The optimisers every spirals run may use (clipping at global norm 1 unless the
# experiment is about clipping); the learning rates are the usual ones for each.
OPTIMISERS = {"sgd": ("SGD, momentum 0.9", 0.02), "adam": ("Adam", 3e-3)}
HIGH_LR = 0.1  # five times the SGD rate the other spirals runs use
HIGH_LR_DEPTH = 10
INIT_DEPTH = 20
CLIP_METHODS = {
    "none": "no clipping",
    "global": "global-norm clip 1",
    "zclip": "ZClip",
    "guard": "gg.Guard (ZClip, skip, backoff, restore)",
}


@dataclass(frozen=True)
class Run:
    """One training run. experiment: a key of EXPERIMENTS; config: its label in tables."""

    experiment: str
    config: str
    seed: int
    steps: int
    optimiser: str = "sgd"
    lr: float = 0.02
    clip: str = "global"  # "none", "global" (max_grad_norm 1), "zclip", "guard"
    depth: int = 0  # hidden layers (spirals)
    activation: str = "relu"
    initialiser: str = "he"
    architecture: str = "plain"
    length: int = 0  # sequence length (adding problem)
    cell: str = ""
    spectral_radius: float = 1.0

    @property
    def cost(self) -> float:
        """Relative cost (about microseconds of one core), for scheduling and the ETA."""
        if self.cell:
            per_step = (110.0 if self.cell == "lstm" else 25.0) * self.length
        else:
            per_layer = {"preln": 60.0, "highway": 75.0, "batch_norm": 65.0, "layer_norm": 55.0}
            per_step = per_layer.get(self.architecture, 45.0) * (self.depth + 1)
        return per_step * self.steps


# ---- the experiments ------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    seeds: tuple
    steps: int  # spirals steps
    sequence_steps: int  # adding-problem steps
    depths: tuple
    lengths: tuple


def init_runs(settings):
    """Initialisation x activation: a plain network of INIT_DEPTH hidden layers, SGD."""
    return [
        Run("init", f"{activation} + {scheme}", seed, settings.steps, depth=INIT_DEPTH, activation=activation,
            initialiser=scheme)
        for activation, scheme, seed in product(ACTIVATIONS, INITIALISERS, settings.seeds)
    ]  # fmt: skip


def depth_runs(settings):
    """Depth x architecture: ReLU, He initialisation, SGD and Adam, at each depth."""
    return [
        Run("depth", ARCHITECTURE_LABELS[architecture], seed, settings.steps, optimiser, OPTIMISERS[optimiser][1],
            depth=depth, architecture=architecture)
        for architecture, optimiser, depth, seed in product(
            ARCHITECTURE_LABELS, OPTIMISERS, settings.depths, settings.seeds
        )
    ]  # fmt: skip


def recurrent_runs(settings):
    """Vanilla tanh RNN against LSTM on the adding problem, Adam with clipping."""
    return [
        Run("recurrent", label, seed, settings.sequence_steps, "adam", 1e-2, length=length, cell=cell)
        for (cell, label), length, seed in product((("rnn", "tanh RNN"), ("lstm", "LSTM")), settings.lengths,
                                                   settings.seeds)
    ]  # fmt: skip


EXPLODING_LENGTH = 50
EXPLODING_RADIUS = 3.0
EXPLODING_LR = 0.2


def exploding_runs(settings):
    """A tanh RNN whose recurrent matrix has spectral radius EXPLODING_RADIUS,
    plain SGD, without and with global-norm clipping (Pascanu et al., 2013)."""
    runs = []
    for clip in ("none", "global"):
        for seed in settings.seeds:
            runs.append(
                Run(
                    "exploding",
                    f"tanh RNN, radius {EXPLODING_RADIUS:g}, {CLIP_METHODS[clip]}",
                    seed,
                    settings.sequence_steps,
                    "plain_sgd",
                    EXPLODING_LR,
                    clip,
                    length=EXPLODING_LENGTH,
                    cell="rnn",
                    spectral_radius=EXPLODING_RADIUS,
                )
            )
    return runs


def high_lr_runs(settings):
    """Too high a learning rate (SGD with momentum at HIGH_LR): no clipping,
    global-norm clipping, ZClip, and the guard."""
    return [
        Run("high_lr", CLIP_METHODS[clip], seed, settings.steps, "sgd", HIGH_LR, clip, depth=HIGH_LR_DEPTH)
        for clip in CLIP_METHODS
        for seed in settings.seeds
    ]


EXPERIMENTS = {
    "init": ("Initialisation x activation", init_runs),
    "depth": ("Depth x architecture", depth_runs),
    "recurrent": ("Recurrent networks: RNN against LSTM", recurrent_runs),
    "exploding": ("Exploding gradients in an RNN, without and with clipping", exploding_runs),
    "high_lr": ("Too high a learning rate: clipping, ZClip and the guard", high_lr_runs),
}


def plan(settings, experiments=None):
    """All runs of the chosen experiments (default: all), in table order."""
    chosen = list(EXPERIMENTS) if experiments is None else list(experiments)
    return [run for key in chosen for run in EXPERIMENTS[key][1](settings)]


# ---- one run ---------------------------------------------------------------------------


def execute(run: Run) -> dict:
    """Train one run and return its record. Divergence is a result: NumPy's
    overflow and invalid-value warnings are silenced and the run is marked."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        record = _train_sequence(run) if run.cell else _train_spirals(run)
    return {**asdict(run), **record}


def _optimiser(run, params):
    clip = 1.0 if run.clip == "global" else None
    if run.optimiser == "adam":
        return Adam(params, lr=run.lr, max_grad_norm=clip)
    momentum = 0.9 if run.optimiser == "sgd" else 0.0
    return SGD(params, lr=run.lr, momentum=momentum, max_grad_norm=clip)


class _Stepper:
    """The update rule of a run's clipping method: optimiser.step with
    max_grad_norm, ZClip's threshold fed into it, or gg.Guard."""

    def __init__(self, run, params):
        self.optimiser = _optimiser(run, params)
        self.zclip = ZClip() if run.clip == "zclip" else None
        self.guard = Guard(self.optimiser, clip="zclip", snapshot_every=25) if run.clip == "guard" else None

    def step(self, grads, loss):
        """Returns (StepReport or None when the guard skipped, the pre-clip global norm)."""
        if self.guard is not None:
            report = self.guard.step(grads, loss=loss)
            return report, (report.grad_norm if report is not None else math.nan)
        norm = global_norm(grads)
        if self.zclip is not None and math.isfinite(norm):
            self.optimiser.max_grad_norm = self.zclip.observe(norm)
        known = norm if math.isfinite(norm) else None
        return self.optimiser.step(grads, return_report=True, grad_norm=known), norm

    def actions(self):
        if self.guard is None:
            return []
        return [{"step": a.step, "cause": a.cause, "action": a.action} for a in self.guard.actions]


def _curve(values):
    """At most CURVE_POINTS points of a per-step series (means over equal spans)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) <= CURVE_POINTS:
        return [_number(v) for v in values]
    edges = np.linspace(0, len(values), CURVE_POINTS + 1).astype(int)
    return [_number(values[a:b].mean()) for a, b in zip(edges[:-1], edges[1:])]


def _number(value):
    """A float for JSON: non-finite values become None (null)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _finding(finding):
    if finding is None:
        return None
    return {"step": finding.step, "layer": finding.layer, "kind": finding.kind}


def spirals(seed):
    x, y = two_spirals(SPIRAL_POINTS, seed=seed)
    train = SPIRAL_POINTS - TEST_POINTS
    return (x[:train], y[:train]), (x[train:], y[train:])


def build_mlp(run, rng, train_x):
    net = MLP([2] + [WIDTH] * run.depth + [2], run.activation, architecture=run.architecture)
    net.initialise("orthogonal" if run.initialiser == "lsuv" else run.initialiser, rng, run.depth)
    if run.initialiser == "lsuv":
        init.lsuv_(net.weights[:-1], net.pre_activations, train_x[:512], orthogonal_start=False, rng=rng)
    return net


def _all_finite(arrays):
    return all(np.isfinite(a).all() for a in arrays)


def _weights_finite(report):
    """Whether the step left every parameter finite, from the norms the step's own pass
    summed (a skipped step, report None, changed nothing)."""
    return report is None or report.param_norms is None or bool(np.isfinite(report.param_norms).all())


def _train_spirals(run):
    (train_x, train_y), (test_x, test_y) = spirals(run.seed)
    rng = np.random.default_rng([run.seed, 1])
    net = build_mlp(run, rng, train_x)
    params = net.parameters()
    stepper = _Stepper(run, params)
    weight_names = [n for n in params if n.endswith(".weight")]
    monitor = GradientMonitor(names=weight_names, window=128)
    losses, norms, first_finding, init_norms = [], [], None, None
    for step in range(run.steps):
        batch = rng.integers(0, len(train_x), BATCH)
        loss, _, grads = net.loss_and_gradients(train_x[batch], train_y[batch])
        weight_grads = {n: grads[n] for n in weight_names}
        if step == 0:
            init_norms = [float(np.linalg.norm(g.astype(np.float64))) for g in weight_grads.values()]
        losses.append(loss)
        if not math.isfinite(loss) and stepper.guard is None:
            break
        report, norm = stepper.step(grads, loss)
        norms.append(norm)
        for finding in monitor.update(weight_grads, step=step, step_report=report):
            if first_finding is None and finding.kind in ("vanishing", "exploding"):
                first_finding = finding
        if not _weights_finite(report):
            break
    finite = math.isfinite(losses[-1]) and _all_finite(params.values())
    test_loss, accuracy = net.evaluate_loss(test_x, test_y) if finite else (math.nan, math.nan)
    diverged = not (finite and math.isfinite(test_loss)) or len(losses) < run.steps
    # The square hidden layers (the first maps 2 inputs, so its norm is not comparable).
    hidden = init_norms[1:-1] or init_norms[:-1]
    return {
        "final_loss": _number(test_loss),
        "test_accuracy": _number(accuracy),
        "converged": bool(not diverged and accuracy >= CONVERGED_ACCURACY),
        "diverged": bool(diverged),
        "first_finding": _finding(first_finding),
        "guard_actions": stepper.actions(),
        "grad_ratio_first_last": _number(hidden[0] / hidden[-1]) if hidden[-1] > 0 else None,
        "median_hidden_grad_norm": _number(np.median(hidden)),
        "init_grad_norms": [_number(v) for v in init_norms],
        "steps_run": len(losses),
        "loss_curve": _curve(losses),
        "grad_norm_curve": _curve(norms),
        "max_grad_norm": _number(np.nanmax(norms)) if norms and not np.isnan(norms).all() else None,
    }


def _train_sequence(run):
    rng = np.random.default_rng([run.seed, 2])
    test_x, test_y = adding_problem(SEQUENCE_TEST, run.length, np.random.default_rng([run.seed, 3]))
    net = Recurrent(run.cell, 2, HIDDEN_UNITS)
    net.initialise(rng, run.spectral_radius)
    stepper = _Stepper(run, net.params)
    monitor = GradientMonitor(names=["W_x", "W_h", "w_out"], window=128)
    losses, norms, distance_norms, first_finding = [], [], None, None
    for step in range(run.steps):
        x, y = adding_problem(SEQUENCE_BATCH, run.length, rng)
        loss, grads, input_norms = net.loss_and_gradients(x, y)
        if step == 0:
            distance_norms = input_norms[::-1]  # index k: the input k steps before the output
        losses.append(loss)
        if not math.isfinite(loss):
            break
        report, norm = stepper.step(grads, loss)
        norms.append(norm)
        watched = {name: grads[name] for name in monitor.names}
        for finding in monitor.update(watched, step=step, step_report=report):
            if first_finding is None and finding.kind in ("vanishing", "exploding"):
                first_finding = finding
        if not _weights_finite(report):
            break
    finite = math.isfinite(losses[-1]) and _all_finite(net.params.values())
    mse = float(np.mean((net.predict(test_x) - test_y) ** 2)) if finite else math.nan
    diverged = not math.isfinite(mse) or len(losses) < run.steps
    return {
        "final_loss": _number(mse),
        "test_accuracy": None,
        "converged": bool(not diverged and mse <= SOLVED_MSE),
        "diverged": bool(diverged),
        "first_finding": _finding(first_finding),
        "guard_actions": stepper.actions(),
        "grad_norm_by_distance": [_number(v) for v in distance_norms],
        "steps_run": len(losses),
        "loss_curve": _curve(losses),
        "grad_norm_curve": _curve(norms),
        "max_grad_norm": _number(np.nanmax(norms)) if norms and not np.isnan(norms).all() else None,
    }
