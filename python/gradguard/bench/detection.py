"""The detection benchmark: real training runs with known ground truth, and
the score of a gradient monitor on them (`python -m gradguard bench --sections
detection`).

Every run trains a NumPy network (gradguard.models.mlp: forward and backward by
hand) with gradguard's own optimisers, deterministically from its seed. A run
is healthy, or sick with a cause injected at an onset step into named layers.
Ground truth is defined here and checked against the run's own record: a
healthy run must really train (its loss falls, nothing is non-finite), and a
sick run must really show its sickness in its recorded gradient norms
(`Run.verify`), or the benchmark refuses to score it.

The score, per monitor: false findings per healthy run (by kind); for each
sick run whether a finding of the expected kind lands on a truly affected
layer within the allowed delay of the onset, the delay, and the layer
precision (the share of layers flagged after the onset that are truly
affected).

The corpus holds fully connected NumPy networks (plain, residual with layer
norm at depth 30, sigmoid, tanh) on two data sets with SGD-momentum and Adam,
warm-up + cosine schedules, a plateau, and zero-initialised biases; and, when
torch is installed, torch-built runs (detection_torch.py): an LSTM and a
vanilla RNN on the adding problem, a small CNN and a 2-layer pre-LN transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..guard import Guard
from ..models import MLP, two_spirals
from ..monitor import GradientMonitor
from ..optim import SGD, Adam

__all__ = ["Run", "RunRecord", "corpus", "run", "score", "format_score"]


# ---- data -------------------------------------------------------------------------


def blobs(points, features=16, classes=4, seed=0):
    """Gaussian blobs labelled by a random linear teacher: an easy task a net learns fast."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((points, features)).astype(np.float32)
    teacher = rng.standard_normal((features, classes))
    return x, np.argmax(x @ teacher, axis=1).astype(np.int64)


DATASETS = {"spirals": lambda seed: two_spirals(2048, seed=seed), "blobs": lambda seed: blobs(2048, seed=seed)}


# ---- runs --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One training run of the corpus.

    sickness: None (healthy), or one of "lr_explosion", "late_explosion",
    "vanishing", "dead", "nonfinite", "decay", "spike", "slow_growth" (onset:
    the step its 10x growth over SLOW_GROWTH_STEPS steps is complete). onset: the step it
    starts; layer: the layer it is injected into (index of a weight), where
    that applies. expected: the finding kinds that count as detecting it.
    """

    name: str
    dataset: str
    depth: int
    width: int
    activation: str
    initialiser: str  # a scheme of MLP.initialise: "he", "he_scaled", "xavier", "normal0.01"
    optimiser: str  # "sgd" (momentum 0.9) or "adam"
    lr: float
    steps: int
    residual: bool = False
    layer_norm: bool = False
    schedule: str = "constant"  # or "warmup_cosine", "step_drop"
    sickness: Optional[str] = None
    onset: int = 0
    layer: int = 0
    expected: tuple = ()
    allowed_delay: int = 10
    seed: int = 0
    model: str = "mlp"  # or, built with torch: "lstm", "rnn", "cnn", "transformer"

    @property
    def healthy(self):
        return self.sickness is None


class CorpusError(AssertionError):
    """A run of the corpus does not show what its ground truth says."""


def _expect(condition, message):
    if not condition:
        raise CorpusError(message)


@dataclass
class RunRecord:
    """What one run recorded: per step the loss, each weight's gradient norm, the findings."""

    run: Run
    layers: list
    losses: list = field(default_factory=list)
    norms: list = field(default_factory=list)  # steps x layers
    findings: list = field(default_factory=list)
    affected: tuple = ()
    skipped: list = field(default_factory=list)  # steps a loss scaler skipped (their gradients overflowed)
    progress: list = field(
        default_factory=list
    )  # where the loss says nothing of progress (a GAN's): a distance that must fall

    @property
    def diverged(self):
        """The run ended with a non-finite loss, or a loss above where it started."""
        losses = np.asarray(self.losses)
        last = losses[-10:]
        return not np.all(np.isfinite(last)) or last.mean() > losses[:10].mean()

    def verify(self):
        """Raise CorpusError unless the run shows what its ground truth says (a
        check, not an assert: it holds under python -O too)."""
        run, losses = self.run, np.asarray(self.losses)
        norms = np.asarray(self.norms)
        if run.healthy:
            kept = np.setdiff1d(np.arange(len(norms)), self.skipped)  # a scaler's skipped steps overflow by design
            finite = np.isfinite(norms[kept]) | np.isnan(norms[kept])  # NaN: no gradient that step (frozen, unrouted)
            _expect(np.all(np.isfinite(losses)) and np.all(finite), f"{run.name}: non-finite values")
            if self.skipped:
                _expect(len(self.skipped) >= 3, f"{run.name}: the scaler skipped too few steps to test anything")
            measure = np.asarray(self.progress) if self.progress else losses
            first, last = measure[:10].mean(), measure[-10:].mean()
            _expect(last < 0.7 * first, f"{run.name}: it did not learn ({first:.3g} -> {last:.3g})")
            return
        _expect(self.affected, f"{run.name}: no affected layer")
        onset = run.onset
        total = np.sqrt(np.nansum(np.where(np.isfinite(norms), norms, 0.0) ** 2, axis=1))
        if run.sickness in ("lr_explosion", "late_explosion"):
            before = np.median(total[max(0, onset - 20) : onset])
            window = norms[onset : onset + run.allowed_delay + 1]
            grew = ~np.all(np.isfinite(window)) or total[onset : onset + run.allowed_delay + 1].max() > 100 * before
            _expect(grew, f"{run.name}: no explosion within {run.allowed_delay} steps of {onset}")
        elif run.sickness == "vanishing":
            _expect(all(norms[0, i] < 1e-3 * norms[0, -1] for i in self.affected), f"{run.name}: not vanishing")
        elif run.sickness == "dead":
            _expect(run.layer in self.affected, f"{run.name}: the killed layer still has gradients")
        elif run.sickness == "nonfinite":
            _expect(not np.isfinite(norms[onset, run.layer]), f"{run.name}: no non-finite gradient")
        elif run.sickness == "slow_growth":
            start = onset - SLOW_GROWTH_STEPS
            level = np.median(norms[start - 40 : start, run.layer])
            _expect(np.median(norms[onset - 5 : onset + 5, run.layer]) > 8 * level, f"{run.name}: no 10x growth")
            steps = norms[start + 1 : onset + 1, run.layer] / norms[start:onset, run.layer]
            _expect(steps.max() < 3.0, f"{run.name}: a step of the growth is a spike")
        elif run.sickness == "decay":
            _expect(norms[onset + 20, run.layer] < 1e-3 * norms[onset, run.layer], f"{run.name}: no decay")
        elif run.sickness == "rnn_exploding":
            head = self.layers.index("head.weight")
            _expect(max(norms[0, i] for i in self.affected) > 1e4 * norms[0, head], f"{run.name}: not exploding")
        elif run.sickness in ("nan_forward", "nan_loss"):
            _expect(not np.all(np.isfinite(norms[onset])), f"{run.name}: no NaN gradient at the onset")
            _expect(np.all(np.isfinite(norms[onset + 1 :])), f"{run.name}: the NaN did not stay at one step")
        elif run.sickness == "spike":
            before = np.median(total[max(0, onset - 20) : onset])
            _expect(total[onset] > 10 * before, f"{run.name}: no spike")


# Steps over which a slow_growth run's gradient grows 10x (its onset: where it gets there).
SLOW_GROWTH_STEPS = 190


def corpus():
    """The runs, healthy and sick (deterministic)."""
    healthy = [
        Run("relu-he-adam-cosine", "blobs", 4, 64, "relu", "he", "adam", 3e-3, 200, schedule="warmup_cosine"),
        Run("tanh-xavier-sgd", "spirals", 6, 32, "tanh", "xavier", "sgd", 0.05, 300),
        Run(
            "preln-residual-depth30",
            "spirals",
            30,
            32,
            "relu",
            "he_scaled",
            "adam",
            2e-3,
            300,
            residual=True,
            layer_norm=True,
            schedule="warmup_cosine",
        ),
        Run("sigmoid-xavier-adam", "blobs", 3, 64, "sigmoid", "xavier", "adam", 1e-2, 200),
        Run("relu-plateau-sgd", "blobs", 3, 64, "relu", "he", "sgd", 0.05, 400, seed=1),
        Run("layernorm-relu-sgd", "blobs", 8, 32, "relu", "he", "sgd", 0.05, 200, layer_norm=True, seed=2),
        Run("tanh-lr-drop-sgd", "spirals", 4, 32, "tanh", "xavier", "sgd", 0.05, 400, schedule="step_drop", seed=3),
    ]
    sick = [
        Run(
            "lr-x100-at-60",
            "blobs",
            4,
            64,
            "relu",
            "he",
            "sgd",
            0.05,
            120,
            sickness="lr_explosion",
            onset=60,
            expected=("exploding",),
        ),
        Run(
            "late-explosion-at-150",
            "spirals",
            6,
            32,
            "relu",
            "he",
            "sgd",
            0.02,
            200,
            sickness="late_explosion",
            onset=150,
            expected=("exploding",),
            allowed_delay=15,
        ),
        Run(
            "deep-sigmoid-small-init",
            "spirals",
            12,
            32,
            "sigmoid",
            "normal0.01",
            "sgd",
            0.1,
            60,
            sickness="vanishing",
            expected=("vanishing",),
        ),
        Run(
            "relu-layer-killed-at-80",
            "blobs",
            5,
            64,
            "relu",
            "he",
            "adam",
            1e-3,
            140,
            sickness="dead",
            onset=80,
            layer=2,
            expected=("dead", "vanishing"),
        ),
        Run(
            "inf-in-layer-2-at-50",
            "blobs",
            4,
            64,
            "relu",
            "he",
            "adam",
            1e-3,
            80,
            sickness="nonfinite",
            onset=50,
            layer=2,
            expected=("exploding",),
        ),
        Run(
            "layer-1-decays-from-60",
            "spirals",
            6,
            32,
            "tanh",
            "xavier",
            "sgd",
            0.05,
            140,
            sickness="decay",
            onset=60,
            layer=1,
            expected=("vanishing",),
            allowed_delay=25,
        ),
        Run(
            "layer-2-grows-10x-by-380",
            "spirals",
            4,
            64,
            "relu",
            "he",
            "adam",
            1e-3,
            420,
            sickness="slow_growth",
            onset=380,
            layer=2,
            expected=("exploding",),
            allowed_delay=20,
        ),
        Run(
            "one-batch-spike-at-90",
            "blobs",
            4,
            64,
            "relu",
            "he",
            "adam",
            1e-3,
            140,
            sickness="spike",
            onset=90,
            expected=("exploding",),
        ),
    ]
    return healthy + sick + _torch_runs()


def _torch_runs():
    """The torch-built runs, when torch is installed (width: the sequence length for recurrent models)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    return [
        Run("torch-lstm-adding", "adding", 1, 20, "tanh", "torch", "adam", 3e-3, 300, model="lstm"),
        Run("torch-cnn-quadrants", "quadrants", 2, 8, "relu", "torch", "adam", 3e-3, 150, model="cnn"),
        Run("torch-preln-transformer", "tokens", 2, 32, "gelu", "torch", "adam", 1e-3, 300, model="transformer"),
        Run("torch-moe-new-expert-at-40", "teacher", 1, 16, "relu", "torch", "adam", 3e-3, 200, model="moe"),
        Run("torch-cnn-unfrozen-at-60", "quadrants", 2, 8, "relu", "torch", "adam", 1e-3, 120, model="frozen_cnn"),
        Run("torch-gradscaler-overflows", "teacher", 2, 64, "tanh", "torch", "adam", 3e-3, 200, model="scaled"),
        Run("torch-wgan-weight-clipping", "points", 2, 32, "leaky_relu", "torch", "rmsprop", 5e-4, 400, model="wgan"),
        Run(
            "torch-nan-in-attention-at-80",
            "tokens",
            2,
            32,
            "gelu",
            "torch",
            "adam",
            1e-3,
            120,
            model="transformer",
            sickness="nan_forward",
            onset=80,
            expected=("exploding",),
        ),
        Run(
            "torch-cnn-nan-loss-at-50",
            "quadrants",
            2,
            8,
            "relu",
            "torch",
            "adam",
            3e-3,
            100,
            model="cnn",
            sickness="nan_loss",
            onset=50,
            expected=("exploding", "loss_spike"),
        ),
        Run(
            "torch-tanh-rnn-radius-3",
            "adding",
            1,
            100,
            "tanh",
            "torch",
            "adam",
            1e-3,
            30,
            model="rnn",
            sickness="rnn_exploding",
            expected=("exploding",),
        ),
    ]


# ---- training ----------------------------------------------------------------------


def _build(run, rng, features, classes):
    net = MLP([features] + [run.width] * run.depth + [classes], run.activation, run.residual, run.layer_norm)
    net.initialise(run.initialiser, rng, run.depth)
    return net


def _learning_rate(run, step, base):
    if run.schedule == "step_drop":  # x0.1 at 60 % of the run: the usual step schedule
        return base * (0.1 if step >= int(0.6 * run.steps) else 1.0)
    if run.schedule == "warmup_cosine":
        warmup = max(1, run.steps // 10)
        if step < warmup:
            return base * (step + 1) / warmup
        progress = (step - warmup) / max(1, run.steps - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


class _Training:
    """One run in progress: the network, its optimiser and monitor, and the record."""

    def __init__(self, spec, make_monitor, batch, guard=False):
        self.spec, self.batch = spec, batch
        self.rng = np.random.default_rng(1000 + spec.seed)
        self.x, self.y = DATASETS[spec.dataset](spec.seed)
        self.net = _build(spec, self.rng, self.x.shape[1], int(self.y.max()) + 1)
        self.params = self.net.parameters()
        self.weight_names = [name for name in self.params if name.endswith("weight")]
        if spec.optimiser == "sgd":
            self.optimiser = SGD(self.params, lr=spec.lr, momentum=0.9)
        else:
            self.optimiser = Adam(self.params, lr=spec.lr)
        self.monitor = (make_monitor or (lambda names: GradientMonitor(names=names)))(list(self.params))
        self.record = RunRecord(spec, self.weight_names)
        self.base_lr = spec.lr
        self.guard = Guard(self.optimiser, clip="zclip", monitor=self.monitor, snapshot_every=10) if guard else None

    def step(self, step):
        spec, net = self.spec, self.net
        rows = self.rng.integers(0, len(self.x), self.batch)
        inputs = self.x[rows]
        if spec.sickness == "spike" and step == spec.onset:
            inputs = inputs * 1000.0  # one corrupted batch
        if spec.sickness == "dead" and step == spec.onset:
            net.biases[spec.layer][...] = -1e4  # every unit of the layer off from now on
        if spec.sickness == "lr_explosion" and step == spec.onset:
            self.base_lr = spec.lr * 100.0
        if spec.sickness == "late_explosion" and step >= spec.onset:
            self.base_lr *= 1.8
        loss, _, grads = net.loss_and_gradients(inputs, self.y[rows])
        if spec.sickness == "nonfinite" and step == spec.onset:
            grads[self.weight_names[spec.layer]].reshape(-1)[0] = np.inf
        if spec.sickness == "slow_growth" and step >= spec.onset - SLOW_GROWTH_STEPS:
            # a gradient growing 1.2 % a step: 10x its level by the onset, no step a spike
            factor = np.float32(10.0 ** ((step - spec.onset + SLOW_GROWTH_STEPS) / SLOW_GROWTH_STEPS))
            for suffix in ("weight", "bias"):
                grads[f"layer{spec.layer:03d}.{suffix}"] *= factor
        if spec.sickness == "decay" and step >= spec.onset:
            factor = np.float32(0.6 ** (step - spec.onset))
            for suffix in ("weight", "bias"):
                grads[f"layer{spec.layer:03d}.{suffix}"] *= factor
        self.record.losses.append(loss)
        self.record.norms.append([float(np.linalg.norm(grads[name].astype(np.float64))) for name in self.weight_names])
        if self.guard is not None:
            self.guard.set_lr(_learning_rate(spec, step, self.base_lr))
            count = len(self.monitor.findings)
            self.guard.step(grads, loss=loss)
            self.record.findings.extend(self.monitor.findings[count:])
            return
        self.optimiser.hyper["lr"] = _learning_rate(spec, step, self.base_lr)
        report = None
        if all(np.all(np.isfinite(g)) for g in grads.values()):
            report = self.optimiser.step(grads, return_report=True)
        else:
            # what a non-finite gradient does to an unguarded step: the parameters become NaN
            for value in self.params.values():
                value[...] = np.nan
        self.record.findings.extend(self.monitor.update(grads, step=step, step_report=report, loss=loss))

    def affected(self):
        """The truly affected layers (indices of weights), by the run's definition and record."""
        spec, norms, layers = self.spec, np.asarray(self.record.norms), len(self.weight_names)
        if spec.sickness in ("lr_explosion", "late_explosion", "spike"):
            return tuple(range(layers))
        if spec.sickness == "vanishing":
            return tuple(i for i in range(layers) if norms[0, i] < 1e-3 * norms[0, -1])
        if spec.sickness == "dead":
            # the killed layer, every layer before it (no signal comes back) and the next
            # layer's weight (its input is all zero): whatever gets exactly zero gradients
            return tuple(i for i in range(layers) if np.all(norms[spec.onset + 1 :, i] == 0.0))
        if spec.sickness in ("nonfinite", "decay", "slow_growth"):
            return (spec.layer,)
        return ()


def run(spec: Run, make_monitor: Callable[[list], object] = None, batch=64, guard=False) -> RunRecord:
    """Train one run, feeding the monitor (default: GradientMonitor(names=...)) every step;
    returns its record (ground truth checked by record.verify()). With guard=True the
    optimiser runs under gg.Guard (ZClip, snapshots every 10 good steps) and the record
    also says whether the run diverged."""
    if spec.model != "mlp":
        return _run_torch(spec, make_monitor)
    training = _Training(spec, make_monitor, batch, guard)
    with np.errstate(all="ignore"):  # a diverging run overflows: that is its result, not a warning
        for step in range(spec.steps):
            training.step(step)
    training.record.affected = training.affected()
    return training.record


# ---- scoring -----------------------------------------------------------------------


def _run_torch(spec, make_monitor):
    import torch

    from .detection_torch import TorchTraining

    record = RunRecord(spec, [])
    with np.errstate(all="ignore"), torch.random.fork_rng():  # the run's seeding leaves the caller's RNG alone
        training = TorchTraining(spec, make_monitor or (lambda names: GradientMonitor(names=names)), record)
        record.layers = list(training.names)
        for step in range(spec.steps):
            training.step(step)
    record.affected = training.affected()
    return record


def _layer_index(record, name):
    """The layer index a parameter name belongs to (for the NumPy runs, a bias counts as its weight's layer)."""
    if name in record.layers:
        return record.layers.index(name)
    for index in range(len(record.layers)):
        if name in (f"layer{index:03d}.weight", f"layer{index:03d}.bias"):
            return index
    return None


def _score_sick(record):
    spec, norms = record.run, np.asarray(record.norms)
    # A slow growth counts from where it began: the layer may pass 10x its level
    # before its injected factor does (its own drift adds to it); the delay is
    # still taken from the onset (negative: found before the factor reached 10x).
    start = spec.onset - SLOW_GROWTH_STEPS if spec.sickness == "slow_growth" else spec.onset
    window = [f for f in record.findings if start <= f.step <= spec.onset + spec.allowed_delay]

    def truly_affected(finding):
        # affected by definition, or (after a non-finite step) holding NaN/inf itself at that step
        index = _layer_index(record, finding.layer)
        return index in record.affected or (index is not None and not np.isfinite(norms[finding.step, index]))

    hits = [f for f in window if f.kind in spec.expected and truly_affected(f)]
    # (a loss spike names the loss, not a layer: it does not count for layer precision)
    layered = [f for f in window if f.kind != "loss_spike"]
    flagged = {f.layer for f in layered}
    correct = {f.layer for f in layered if truly_affected(f)}
    return {
        "run": spec.name,
        "healthy": False,
        "detected": bool(hits),
        "delay": (min(f.step for f in hits) - spec.onset) if hits else None,
        "precision": len(correct) / len(flagged) if flagged else math.nan,
    }


def _real_surge(losses, step, window=128):
    """Whether the recorded loss at step is non-finite or at least twice the median
    of the window before it (llm-foundry's loss-spike rule, from the record alone)."""
    loss, before = losses[step], np.asarray(losses[max(0, step - window) : step], dtype=np.float64)
    return not math.isfinite(loss) or (before.size > 0 and loss >= 2.0 * float(np.median(before)))


def score(records):
    """One row per run: healthy runs count their (false) findings by kind; sick runs
    say whether they were detected in time on a truly affected layer, the delay,
    and the layer precision."""
    rows = []
    for record in records:
        if record.run.healthy:
            kinds, surges = {}, 0
            for finding in record.findings:
                if finding.kind == "loss_spike" and _real_surge(record.losses, finding.step):
                    surges += 1  # the loss really rose: a spike the run recovered from, not a false finding
                    continue
                kinds[finding.kind] = kinds.get(finding.kind, 0) + 1
            rows.append({"run": record.run.name, "healthy": True, "false_findings": kinds, "loss_surges": surges})
        else:
            rows.append(_score_sick(record))
    return rows


def format_score(rows):
    lines = [
        "detection benchmark (NumPy MLPs, and torch-built models when torch is installed; default GradientMonitor)",
        "",
        f"{'run':<28} {'kind':<8} result",
    ]
    for row in rows:
        if row["healthy"]:
            found = ", ".join(f"{k} {n}" for k, n in sorted(row["false_findings"].items())) or "none"
            surges = f"  (loss spikes it recovered from: {row['loss_surges']})" if row.get("loss_surges") else ""
            lines.append(f"{row['run']:<28} {'healthy':<8} false findings: {found}{surges}")
        else:
            delay = "-" if row["delay"] is None else str(row["delay"])
            lines.append(
                f"{row['run']:<28} {'sick':<8} detected: {'yes' if row['detected'] else 'NO '}  "
                f"delay: {delay:>3}  layer precision: {row['precision']:.2f}"
            )
    return "\n".join(lines)


def guard_comparison(specs=None):
    """For each sick NumPy run: (name, failed without the guard, failed with it); a run
    fails when it ends non-finite or with its loss above where it started."""
    rows = []
    for spec in specs or [s for s in corpus() if not s.healthy and s.model == "mlp"]:
        rows.append((spec.name, run(spec).diverged, run(spec, guard=True).diverged))
    return rows


def format_guard_comparison(rows):
    lines = [
        "gg.Guard (ZClip, non-finite steps skipped, lr backoff, snapshots) on the sick runs",
        "",
        f"{'run':<28} {'unguarded':<10} guarded",
    ]
    for name, without, with_guard in rows:
        lines.append(f"{name:<28} {'fails' if without else 'trains':<10} {'fails' if with_guard else 'trains'}")
    lines.append(
        f"failed (non-finite, or the loss did not fall): {sum(r[1] for r in rows)} of {len(rows)} "
        f"without the guard, {sum(r[2] for r in rows)} with it"
    )
    return "\n".join(lines)


def main_section():
    """Run the corpus with the default monitor and print the score table, then the guard's effect."""
    records = []
    for spec in corpus():
        record = run(spec)
        record.verify()
        records.append(record)
    print(format_score(score(records)))
    print()
    print(format_guard_comparison(guard_comparison()))
