"""The demo's networks (backward passes against finite differences), its
experiments, runner, verdicts and command line."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from gradguard import demo
from gradguard.demo import experiments, runner, summary
from gradguard.models import MLP, Recurrent, adding_problem, two_spirals
from gradguard.models.mlp import ACTIVATIONS, ARCHITECTURES


def _directional_check(loss_of, params, grads, rng, step=1e-6):
    """Each gradient against a central difference along a random direction."""
    for name, array in params.items():
        direction = rng.standard_normal(array.shape)
        array += step * direction
        plus = loss_of()
        array -= 2 * step * direction
        minus = loss_of()
        array += step * direction
        assert np.sum(grads[name] * direction) == pytest.approx((plus - minus) / (2 * step), rel=1e-6, abs=1e-9), name


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_mlp_backward_matches_finite_differences(architecture, activation):
    rng = np.random.default_rng(0)
    net = MLP([2, 6, 6, 6, 2], activation, architecture=architecture, dtype=np.float64)
    net.initialise("xavier", rng)
    for array in net.parameters().values():
        array += rng.standard_normal(array.shape) * 0.3
    x, labels = rng.standard_normal((7, 2)), rng.integers(0, 2, 7)
    _, _, grads = net.loss_and_gradients(x, labels)
    assert set(grads) == set(net.parameters())
    if architecture == "highway":
        assert "layer001.gate_weight" in grads and "layer000.gate_weight" not in grads
    _directional_check(lambda: net.loss_and_gradients(x, labels)[0], net.parameters(), grads, rng)


@pytest.mark.parametrize(
    "activation, residual, layer_norm",
    [("tanh", False, False), ("relu", True, False), ("sigmoid", False, True), ("tanh", True, True)],
)
def test_mlp_flag_spelling_matches_finite_differences(activation, residual, layer_norm):
    rng = np.random.default_rng(1)
    net = MLP([2, 6, 6, 6, 2], activation, residual, layer_norm, dtype=np.float64)
    for array in net.parameters().values():
        array[...] = rng.standard_normal(array.shape) * 0.7
    x, labels = rng.standard_normal((7, 2)), rng.integers(0, 2, 7)
    _, _, grads = net.loss_and_gradients(x, labels)
    _directional_check(lambda: net.loss_and_gradients(x, labels)[0], net.parameters(), grads, rng)


def test_mlp_refuses_unknown_names():
    with pytest.raises(ValueError, match="architecture"):
        MLP([2, 4, 2], architecture="dense")
    with pytest.raises(ValueError, match="activation"):
        MLP([2, 4, 2], "gelu")
    with pytest.raises(ValueError, match="scheme"):
        MLP([2, 4, 2]).initialise("glorot", np.random.default_rng(0))


def test_preln_branches_start_scaled_and_highway_gates_closed():
    rng = np.random.default_rng(0)
    plain = MLP([2] + [64] * 16 + [2], "relu")
    plain.initialise("he", np.random.default_rng(0))
    preln = MLP([2] + [64] * 16 + [2], "relu", architecture="preln")
    preln.initialise("he", np.random.default_rng(0))
    # Same draws, hidden-to-hidden weights divided by sqrt(16).
    np.testing.assert_allclose(preln.weights[3], plain.weights[3] / 4.0, rtol=1e-6)
    np.testing.assert_array_equal(preln.weights[0], plain.weights[0])
    highway = MLP([2, 8, 8, 2], "relu", architecture="highway")
    highway.initialise("he", rng)
    assert (highway.gate_biases[1] == -2.0).all() and 0 not in highway.gate_biases


def test_batch_norm_evaluates_with_running_statistics():
    rng = np.random.default_rng(0)
    net = MLP([2, 8, 8, 8, 2], "relu", architecture="batch_norm", dtype=np.float64)
    net.initialise("he", rng)
    x, labels = rng.standard_normal((64, 2)) * 3 + 1, rng.integers(0, 2, 64)
    for _ in range(200):
        net.loss_and_gradients(x, labels)
    mean, var = net.running[1]
    z = np.maximum(x @ net.weights[0].T + net.biases[0], 0) @ net.weights[1].T + net.biases[1]
    np.testing.assert_allclose(mean, z.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(var, z.var(axis=0, ddof=1), rtol=1e-4)
    # Evaluation normalises with the running statistics, so a row's output does not depend on its batch.
    whole = net._forward(x, training=False)[0]
    np.testing.assert_allclose(net._forward(x[:5], training=False)[0], whole[:5], rtol=1e-10)


def test_two_spirals_are_balanced_and_reproducible():
    x, y = two_spirals(1000, seed=3)
    assert x.shape == (1000, 2) and y.mean() == 0.5
    np.testing.assert_array_equal(x, two_spirals(1000, seed=3)[0])


# ---- recurrent networks -------------------------------------------------------------------


def test_adding_problem_marks_one_value_in_each_half():
    x, targets = adding_problem(500, 30, np.random.default_rng(0), np.float64)
    assert x.shape == (30, 500, 2) and targets.shape == (500,)
    markers = x[:, :, 1]
    assert (markers.sum(axis=0) == 2).all()
    assert (markers[:15].sum(axis=0) == 1).all() and (markers[15:].sum(axis=0) == 1).all()
    np.testing.assert_allclose(targets, (x[:, :, 0] * markers).sum(axis=0))
    assert np.var(targets) == pytest.approx(1 / 6, rel=0.15)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bptt_matches_finite_differences(cell):
    rng = np.random.default_rng(4)
    net = Recurrent(cell, 2, 5, dtype=np.float64)
    net.initialise(rng, spectral_radius=1.3)
    for array in net.params.values():
        array += rng.standard_normal(array.shape) * 0.2
    x, targets = adding_problem(4, 9, rng, np.float64)
    _, grads, input_norms = net.loss_and_gradients(x, targets)
    _directional_check(lambda: net.loss_and_gradients(x, targets)[0], net.params, grads, rng)
    # ||dL/dx_t||: the input gradient of every step, by finite differences element by element.
    for t in (0, 4, 8):
        numeric = np.zeros(x[t].shape)
        for index in np.ndindex(x[t].shape):
            x[t][index] += 1e-6
            plus = net.loss_and_gradients(x, targets)[0]
            x[t][index] -= 2e-6
            minus = net.loss_and_gradients(x, targets)[0]
            x[t][index] += 1e-6
            numeric[index] = (plus - minus) / 2e-6
        assert input_norms[t] == pytest.approx(np.linalg.norm(numeric), rel=1e-5)


def test_recurrent_initialisation_sets_the_spectral_radius_and_forget_bias():
    net = Recurrent("rnn", 2, 16, dtype=np.float64)
    net.initialise(np.random.default_rng(0), spectral_radius=3.0)
    np.testing.assert_allclose(np.abs(np.linalg.eigvals(net.params["W_h"])), 3.0, rtol=1e-8)
    lstm = Recurrent("lstm", 2, 4)
    lstm.initialise(np.random.default_rng(0))
    np.testing.assert_array_equal(lstm.params["b"][4:8], 1.0)
    np.testing.assert_array_equal(lstm.params["b"][:4], 0.0)
    with pytest.raises(ValueError, match="cell"):
        Recurrent("gru", 2, 4)


# ---- experiments, runner, verdicts --------------------------------------------------------

TINY = experiments.Settings(seeds=(0, 1), steps=12, sequence_steps=6, depths=(3,), lengths=(6,))


def test_every_experiment_runs_and_records_what_the_issue_asks():
    runs = experiments.plan(TINY)
    assert {r.experiment for r in runs} == set(experiments.EXPERIMENTS)
    assert len({(r.experiment, r.config, r.depth, r.length, r.optimiser, r.seed) for r in runs}) == len(runs)
    for key in experiments.EXPERIMENTS:
        run = next(r for r in runs if r.experiment == key)
        record = experiments.execute(run)
        for field in (
            "experiment",
            "config",
            "seed",
            "optimiser",
            "final_loss",
            "test_accuracy",
            "converged",
            "diverged",
            "first_finding",
            "guard_actions",
        ):
            assert field in record, (key, field)
        json.dumps(record, allow_nan=False)
        assert record == experiments.execute(run)  # a run is a function of its description


def test_divergence_is_a_result_not_a_warning():
    """The exploding RNN overflows without clipping: marked diverged, no RuntimeWarning
    (pytest turns warnings into errors here)."""
    run = next(r for r in experiments.exploding_runs(replace(TINY, sequence_steps=60)) if r.clip == "none")
    record = experiments.execute(run)
    assert record["diverged"] and not record["converged"] and record["final_loss"] is None
    assert record["first_finding"]["kind"] == "exploding"


def test_workers_give_the_same_records_as_one_process():
    runs = [r for r in experiments.plan(TINY) if r.seed == 0][::7]
    inline = runner.run_all(runs, jobs=1, progress=runner.Progress(runs, stream=_Sink()))
    pooled = runner.run_all(runs, jobs=2, progress=runner.Progress(runs, stream=_Sink()))
    assert inline == pooled


class _Sink:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_off_a_terminal_is_one_line_per_experiment():
    runs = experiments.plan(TINY)
    sink = _Sink()
    progress = runner.Progress(runs, stream=sink)
    for run in runs:
        progress.advance(run)
    progress.close()
    lines = sink.text.splitlines()
    assert "\r" not in sink.text and len(lines) == len(experiments.EXPERIMENTS)
    assert all("runs done" in line and "left" in line for line in lines)


def _record(experiment, config, converged, seed, size=100, optimiser="adam", **extra):
    return {
        "experiment": experiment,
        "config": config,
        "seed": seed,
        "depth": size,
        "length": 0,
        "optimiser": optimiser,
        "converged": converged,
        "diverged": False,
        "final_loss": 0.1,
        "test_accuracy": 0.95 if converged else 0.5,
        "first_finding": None,
        "guard_actions": [],
        "grad_ratio_first_last": 1.0,
        **extra,
    }


def test_verdicts_follow_the_rule_not_the_wording():
    labels = experiments.ARCHITECTURE_LABELS
    trains = {"preln"}
    records = [
        _record("depth", labels[a], a in trains, seed)
        for a in ("plain", "residual", "preln", "highway")
        for seed in range(5)
    ]
    verdict = next(v for v in summary.verdicts(records) if v.claim.startswith("Residual"))
    assert verdict.verdict == "holds only with " + labels["preln"]
    records = [
        _record("depth", labels[a], a != "plain", seed)
        for a in ("plain", "residual", "preln", "highway")
        for seed in range(5)
    ]
    assert next(v for v in summary.verdicts(records) if v.claim.startswith("Residual")).verdict == "confirmed"
    records = [_record("depth", labels[a], True, seed) for a in ("plain", "preln") for seed in range(5)]
    assert next(v for v in summary.verdicts(records) if v.claim.startswith("Residual")).verdict == "refuted"


def test_tables_report_median_range_and_rate():
    records = [
        _record("high_lr", "x", seed < 3, seed, 10, test_accuracy=acc)
        for seed, acc in enumerate([0.5, 0.9, 0.7, 1.0, 0.8])
    ]
    header, rows = summary.table(summary.groups(records), "high_lr")
    row = dict(zip(header, rows[0]))
    assert row["converged"] == "3/5" and row["test accuracy"] == "0.800 [0.500-1.000]"


# ---- the command line -------------------------------------------------------------------


def _gradguard(*arguments, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gradguard", *arguments], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["demo", "--configs", "12"], "unrecognized arguments: --configs 12"),
        (["demo", "--steps", "0"], "--steps: must be at least 1, got 0"),
        (["demo", "--seeds", "two"], "'two' is not a whole number"),
        (["demo", "--experiments", "gan"], "invalid choice: 'gan'"),
        (["demo", "--quick", "--full"], "not allowed with argument"),
        (["demo", "--out", "/proc/gradguard-demo"], "--out /proc/gradguard-demo is not writable"),
        (["bench", "--repeat", "0"], "--repeat: must be at least 1"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_give_one_line_before_any_work(arguments, message):
    result = _gradguard(*arguments)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_out_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "taken"
    target.write_text("mine")
    result = _gradguard("demo", "--out", str(target))
    assert result.returncode == 2 and "is not a folder" in result.stderr and target.read_text() == "mine"


def test_version():
    from gradguard import __version__

    result = _gradguard("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"gradguard {__version__}"


def test_a_small_demo_writes_results_report_and_pictures(tmp_path):
    (tmp_path / "notes.txt").write_text("left alone")
    (tmp_path / "results.json").write_text("stale")
    arguments = ["demo", "--seeds", "2", "--steps", "20", "--sequence-steps", "8", "--depths", "4"]
    arguments += ["--lengths", "6", "--jobs", "2", "--out", str(tmp_path)]
    result = _gradguard(*arguments)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "notes.txt").read_text() == "left alone"
    document = json.loads((tmp_path / "results.json").read_text())
    assert document["settings"]["seeds"] == [0, 1] and document["simd_target"]
    assert len(document["runs"]) == len(experiments.plan(replace(TINY, steps=20, sequence_steps=8, depths=(4,))))
    report = (tmp_path / "report.md").read_text()
    for title, _ in experiments.EXPERIMENTS.values():
        assert f"## {title}" in report and title in result.stdout
    assert "## The claims, as this run measured them" in report
    assert "RuntimeWarning" not in result.stderr and "\r" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if "runs done" in line]) == len(experiments.EXPERIMENTS)
    if pytest.importorskip("matplotlib"):
        for name in (
            "gradient_flow_at_init.png",
            "loss_curves.png",
            "rnn_gradient_by_distance.png",
            "convergence_by_depth.png",
        ):
            assert (tmp_path / name).stat().st_size > 10_000 and f"({name})" in report


def test_demo_main_is_the_command(tmp_path, capsys):
    arguments = ["--seeds", "1", "--steps", "5", "--experiments", "high_lr", "--jobs", "1", "--out", str(tmp_path)]
    assert demo.main(arguments) == 0
    first = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert demo.main(arguments) == 0
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == first
    assert "Too high a learning rate" in capsys.readouterr().out
