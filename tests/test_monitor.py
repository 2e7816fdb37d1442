"""GradientMonitor on synthetic histories whose truth is known, and the
adaptive clippers against plain re-implementations of the papers' rules."""

import json
import warnings

import numpy as np
import pytest

import gradguard as gg
from conftest import layer_with_norm


def run(norms, zero_fractions=None, **settings):
    """Feed norms[step][layer]; return the monitor and its findings."""
    rng = np.random.default_rng(0)
    steps, layers = norms.shape
    monitor = gg.GradientMonitor(names=[f"layer{i}" for i in range(layers)], **settings)
    for step in range(steps):
        zeros = zero_fractions[step] if zero_fractions is not None else np.zeros(layers)
        monitor.update([layer_with_norm(rng, norms[step, i], zeros[i]) for i in range(layers)], step=step)
    return monitor, monitor.findings


def stationary(rng, steps, layers, sigma=0.1):
    return np.exp(rng.standard_normal((steps, layers)) * sigma)


def test_no_finding_on_a_long_stationary_run():
    rng = np.random.default_rng(1)
    norms = stationary(rng, 10_000, 4) * np.array([1.0, 0.3, 3.0, 0.05])
    monitor, findings = run(norms)
    assert findings == []
    assert monitor.history()["norm"].shape == (256, 4)  # bounded memory


def test_depth_decay_flags_exactly_the_layers_far_below_the_median():
    rng = np.random.default_rng(2)
    depth = 0.5 ** np.arange(30)
    norms = stationary(rng, 40, 30, sigma=0.02) * depth
    _, findings = run(norms)
    vanishing = {f.layer for f in findings if f.kind == "vanishing"}
    median = np.median(depth)
    expected = {f"layer{i}" for i in range(30) if depth[i] < 1e-4 * median * 0.9}
    assert expected and vanishing == expected
    assert all(f.step == 4 for f in findings)  # patience 5: the fifth step


def test_layer_decaying_over_steps():
    rng = np.random.default_rng(3)
    norms = stationary(rng, 400, 3)
    norms[:, 1] = 1.0
    norms[200:, 1] = 0.7 ** np.arange(1, 201)  # x0.7 a step from step 200
    # 0.7^20 < 1e-3 x its history median (1.0) <= 0.7^19: the decay test holds from step 219
    # and five steps in a row at step 223.
    _, findings = run(norms)
    assert [(f.layer, f.kind, f.step) for f in findings] == [("layer1", "vanishing", 223)]
    assert "since step 219" in findings[0].message and "decayed from its history" in findings[0].message


def test_spike_at_step_500():
    rng = np.random.default_rng(4)
    norms = stationary(rng, 600, 3)
    norms[500, 2] = 1e4
    _, findings = run(norms)
    assert [(f.layer, f.kind, f.step) for f in findings] == [("layer2", "exploding", 500)]
    assert findings[0].evidence["z"] > 8


def test_nan_at_step_300_and_geometric_growth():
    rng = np.random.default_rng(5)
    norms = stationary(rng, 400, 3)
    norms[300:, 0] = np.nan
    norms[100:110, 1] *= 3.0 ** np.arange(1, 11)
    _, findings = run(norms, spike_z=1e9)  # growth alone, not the spike test
    found = [(f.layer, f.kind, f.step) for f in findings]
    assert ("layer0", "exploding", 300) in found
    assert ("layer1", "exploding", 104) in found  # fifth consecutive tripling
    assert len(found) == 2


def test_dead_units():
    rng = np.random.default_rng(6)
    norms = stationary(rng, 200, 3)
    zeros = np.zeros((200, 3))
    zeros[100:, 1] = 1.0  # the whole layer's gradient exactly zero: a layer behind dead units
    zeros[100:, 2] = 0.95  # a sparse gradient (an embedding's untouched rows) is not dead by default
    _, findings = run(norms, zeros)
    assert [(f.layer, f.kind, f.step) for f in findings] == [("layer1", "dead", 104)]
    assert "leaky activation" in findings[0].message and findings[0].evidence["remedy"]
    _, findings = run(norms, zeros, dead_fraction=0.9)
    assert [(f.layer, f.kind) for f in findings] == [("layer1", "dead"), ("layer2", "dead")]


def test_one_finding_per_cause_and_no_re_reporting_while_flapping():
    rng = np.random.default_rng(12)
    norms = stationary(rng, 120, 4)
    zeros = np.zeros((120, 4))
    norms[50:, 0] = 0.0  # dead (all zero) is also below every vanishing threshold: reported once, as dead
    zeros[50:, 0] = 1.0
    # below 1e-4 x the median layer for 5 steps, above it for 2: one report, not one per cycle
    norms[20:, 3] = np.where(np.arange(100) % 7 < 5, 0.5e-4, 2e-4)
    _, findings = run(norms, zeros)
    assert [(f.layer, f.kind) for f in findings if f.layer == "layer0"] == [("layer0", "dead")]
    assert [(f.layer, f.kind, f.step) for f in findings if f.layer == "layer3"] == [("layer3", "vanishing", 24)]


def test_exploding_from_the_first_step_without_history():
    rng = np.random.default_rng(13)
    norms = stationary(rng, 10, 6)
    norms[:, 2] = 1e19  # e.g. a recurrent layer with spectral radius > 1, from step 0
    _, findings = run(norms)
    assert [(f.layer, f.kind, f.step) for f in findings] == [("layer2", "exploding", 0)]
    assert "clip" in findings[0].message


def test_deep_geometric_decay_is_vanishing_not_exploding():
    rng = np.random.default_rng(14)
    norms = stationary(rng, 10, 13, sigma=0.01) * 10.0 ** -np.arange(12, -1, -2.0).repeat(2)[:13]
    _, findings = run(norms)
    assert {f.kind for f in findings} == {"vanishing"}


def test_update_ratio_of_the_update_actually_applied(tmp_path):
    params = {"w": np.full((8, 8), 10.0, np.float32), "b": np.ones(8, np.float32)}
    optimizer = gg.optim.SGD(params, lr=1.0)
    monitor = gg.GradientMonitor()
    for step in range(10):
        grads = {"w": np.full((8, 8), 5.0 if step >= 2 else 1e-3, np.float32), "b": np.full(8, 50.0, np.float32)}
        report = optimizer.step(grads, return_report=True)
        monitor.update(grads, step_report=report)
    # the bias moves by far more than 10% a step too, but vectors are not judged
    assert [(f.layer, f.kind, f.step) for f in monitor.findings] == [("w", "update_ratio", 6)]
    assert monitor.history()["update_ratio"][-1, 1] != monitor.history()["update_ratio"][-1, 1]  # NaN for b
    summary = monitor.summary()
    assert summary["steps"] == 10 and summary["flagged"] == {"w": ["update_ratio"]}
    assert "update_ratio" in monitor.report()
    monitor.to_csv(tmp_path / "history.csv")
    monitor.to_jsonl(tmp_path / "findings.jsonl")
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert rows[0].startswith("step,layer,norm") and len(rows) == 1 + 10 * 2
    assert json.loads((tmp_path / "findings.jsonl").read_text().splitlines()[0])["layer"] == "w"


def test_without_the_update_the_ratio_rule_is_off():
    monitor = gg.GradientMonitor()
    for _ in range(10):
        monitor.update({"w": np.full((8, 8), 100.0, np.float32)})
    assert monitor.findings == []


def test_params_are_deprecated_and_ignored():
    monitor = gg.GradientMonitor()
    with pytest.warns(DeprecationWarning, match=r"update\(params=\) is ignored"):
        monitor.update({"w": np.ones((2, 2), np.float32)}, params={"w": "not even an array"})
    assert monitor.summary()["steps"] == 1


def test_monitor_does_not_misread_extreme_layers():
    monitor = gg.GradientMonitor()
    grads = {
        "huge": np.array([3e38, -3e38, 1, 2], np.float32),
        "outlier": np.concatenate([np.ones(99, np.float32), np.array([2e19], np.float32)]),
        "normal": np.ones(10, np.float32),
    }
    for _ in range(6):
        findings = monitor.update(grads)
        for finding in findings:
            # 3e38 and 2e19 are exploding gradients, and said so with their true norms:
            # never "vanishing with norm 0", never "holds NaN/inf"
            assert finding.layer in ("huge", "outlier") and finding.kind == "exploding", finding
            assert "NaN/inf" not in finding.message and finding.evidence["norm"] > 1e19


def test_monitor_matches_dicts_by_name():
    monitor = gg.GradientMonitor()
    monitor.update({"small": np.full(4, 1e-3, np.float32), "large": np.full(4, 10.0, np.float32)})
    monitor.update({"large": np.full(4, 10.0, np.float32), "small": np.full(4, 1e-3, np.float32)})
    history = monitor.history()
    np.testing.assert_allclose(history["norm"][:, history["layers"].index("small")], 2e-3, rtol=1e-6)
    with pytest.raises(ValueError, match=r"missing \['large'\]"):
        monitor.update({"small": np.ones(4, np.float32)})
    assert monitor.summary()["steps"] == 2


def test_an_absent_layer_has_no_zero_fraction_and_is_not_logged():
    monitor = gg.GradientMonitor(names=["a", "b"])
    for _ in range(3):
        monitor.update({"a": np.ones(4, np.float32)}, allow_missing=True)
    assert np.isnan(monitor.history()["zero_fraction"][:, 1]).all()
    assert not any(key.endswith("/b") for key in monitor.latest())


def test_a_layer_without_elements_is_never_judged():
    monitor = gg.GradientMonitor()
    for _ in range(30):
        monitor.update({"a": np.ones(4, np.float32), "empty": np.zeros(0, np.float32)})
    assert monitor.findings == [] and monitor.summary()["flagged"] == {}
    assert np.isnan(monitor.history()["norm"][:, 1]).all()


def test_update_stats_with_integer_names_and_a_finding_reports():
    monitor = gg.GradientMonitor()
    stats = gg.grad_stats({1: np.ones(4, np.float32), 2: np.full(4, np.nan, np.float32)})
    findings = monitor.update_stats(stats)
    assert [(f.layer, f.kind) for f in findings] == [("2", "exploding")]
    assert "2" in monitor.report()
    with pytest.raises(TypeError, match="step"):
        monitor.update_stats(stats, step="3")
    assert monitor.summary()["steps"] == 1


def _story(rng, steps=80):
    """Two layers: one decays to nothing from step 30, the other spikes at 50 and grows from 60."""
    sequence = []
    for step in range(steps):
        a = rng.standard_normal(64) * (1.0 if step < 30 else 1e-12)
        b = rng.standard_normal(32) * (1e5 if step == 50 else 1.0) * (2.0 ** max(0, step - 60))
        sequence.append({"a": a.astype(np.float32), "b": b.astype(np.float32)})
    return sequence


@pytest.mark.parametrize("resume_at", [1, 29, 55, 79])
@pytest.mark.parametrize("through_json", [False, True])
def test_a_resumed_monitor_makes_the_findings_of_the_uninterrupted_one(resume_at, through_json):
    sequence = _story(np.random.default_rng(4))
    whole = gg.GradientMonitor(window=32, min_history=8)
    for grads in sequence:
        whole.update(grads)
    first = gg.GradientMonitor(window=32, min_history=8)
    for grads in sequence[:resume_at]:
        first.update(grads)
    state = first.state_dict()
    if through_json:
        state = json.loads(json.dumps(state))
    resumed = gg.GradientMonitor(window=32, min_history=8)
    resumed.load_state_dict(state)
    for grads in sequence[resume_at:]:
        resumed.update(grads)
    assert {f.kind for f in whole.findings} >= {"vanishing", "exploding"}
    assert resumed.findings == whole.findings
    assert resumed.summary() == whole.summary()
    np.testing.assert_array_equal(resumed.history()["norm"], whole.history()["norm"])


def test_monitor_state_dict_is_what_torch_load_weights_only_accepts(tmp_path):
    torch = pytest.importorskip("torch")
    monitor = gg.GradientMonitor()
    for grads in _story(np.random.default_rng(1), steps=10):
        monitor.update(grads)
    torch.save(monitor.state_dict(), tmp_path / "monitor.pt")
    loaded = torch.load(tmp_path / "monitor.pt", weights_only=True)
    again = gg.GradientMonitor()
    again.load_state_dict(loaded)
    assert again.summary() == monitor.summary()


@pytest.mark.parametrize(
    "change, error",
    [
        ({"format": 3}, ValueError),
        ({"format": True}, ValueError),
        ({"settings": {"window": 3}}, ValueError),
        ({"names": ["a", "a"]}, ValueError),
        ({"names": ["x", "y"]}, ValueError),
        ({"last_step": "x"}, TypeError),
        ({"findings": [{"step": 1}]}, ValueError),
        ({"history": None}, ValueError),
        ({"bogus": 1}, ValueError),
    ],
)
def test_monitor_load_state_dict_refuses_a_bad_state_and_changes_nothing(change, error):
    monitor = gg.GradientMonitor(names=["a", "b"])
    for grads in _story(np.random.default_rng(2), steps=6):
        monitor.update(grads)
    before = json.dumps(monitor.state_dict())
    with pytest.raises(error):
        monitor.load_state_dict({**monitor.state_dict(), **change})
    history = monitor.state_dict()["history"]
    bad_history = dict(history, series=dict(history["series"], norm=[[1.0]]))
    with pytest.raises(ValueError, match="shape"):
        monitor.load_state_dict({**monitor.state_dict(), "history": bad_history})
    assert json.dumps(monitor.state_dict()) == before


@pytest.mark.parametrize("spike", [20, 24, 31, 33])
def test_a_spike_is_seen_as_soon_as_the_history_is_long_enough(spike):
    """The baseline is taken again at every step until it covers min_history steps
    (cached from step 16 it used to keep the z-score test off until step 32)."""
    rng = np.random.default_rng(3)
    norms = stationary(rng, 40, 3)
    norms[spike] *= 1e4
    monitor, findings = run(norms)
    assert {(f.step, f.kind) for f in findings} == {(spike, "exploding")}


def test_a_monitor_with_a_layer_that_never_had_a_gradient_checkpoints():
    monitor = gg.GradientMonitor(names=["a", "never"])
    for step in range(25):
        monitor.update({"a": np.full(4, 1.0 + step % 3, np.float32)}, allow_missing=True)
    resumed = gg.GradientMonitor(names=["a", "never"])
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.summary() == monitor.summary()


def test_the_norm_before_and_after_the_clip_and_the_clip_rate():
    """A caller that clips says what its clip did: latest(), report() and
    history() carry both norms, whether the step was clipped and the rate."""
    monitor = gg.GradientMonitor(names=["a", "b"], window=4, min_history=2)
    grads = {"a": np.full(4, 3.0, np.float32), "b": np.full(4, 4.0, np.float32)}  # global norm 10
    monitor.update(grads)  # clip unknown
    flat = monitor.latest()
    assert flat["gradguard/grad_norm_before_clip"] == pytest.approx(10.0)
    assert "gradguard/grad_norm_after_clip" not in flat and "gradguard/clip_rate" not in flat
    assert np.isnan(monitor.clip_rate())
    monitor.update(grads, norm_after_clip=1.0)
    flat = monitor.latest()
    assert (flat["gradguard/grad_norm_after_clip"], flat["gradguard/clipped"], flat["gradguard/clip_rate"]) == (
        1.0,
        1.0,
        1.0,
    )
    stats = gg.grad_stats(grads)
    monitor.update_stats(stats, norm_after_clip=stats.global_norm)  # a clip that did not scale
    assert monitor.latest()["gradguard/clipped"] == 0.0 and monitor.clip_rate() == 0.5
    assert "10 before clipping, 10 after (not clipped); clip rate 50.0% over the last 3 steps" in monitor.report()
    for _ in range(3):  # the window (4 steps) forgets the clipped step
        monitor.update(grads, norm_after_clip=10.0)
    assert monitor.clip_rate() == 0.0
    history = monitor.history()
    np.testing.assert_allclose(history["grad_norm"], 10.0)
    np.testing.assert_array_equal(history["norm_after_clip"], [10.0] * 4)
    with pytest.raises(ValueError, match="norm_after_clip"):
        monitor.update(grads, norm_after_clip=-1.0)
    with pytest.raises(TypeError, match="norm_after_clip"):
        monitor.update_stats(stats, norm_after_clip="1")
    assert monitor.summary()["steps"] == 6  # the refused calls recorded nothing
    resumed = gg.GradientMonitor(names=["a", "b"], window=4, min_history=2)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    np.testing.assert_array_equal(resumed.history()["norm_after_clip"], history["norm_after_clip"])


def test_a_format_1_checkpoint_loads_with_the_clip_unknown():
    monitor = gg.GradientMonitor(names=["a", "b"])
    for grads in _story(np.random.default_rng(5), steps=6):
        monitor.update(grads, norm_after_clip=0.5)
    state = monitor.state_dict()
    state["format"] = 1  # what gradguard wrote before the clip record and the sustained-growth detector
    del state["history"]["totals"]
    for key in ("sustained", "reference", "loss"):
        del state["detectors"][key]
    for key in ("sustained_growth", "sustained_steps", "reference_history", "loss_spike_z", "loss_rise", "loss_window"):
        del state["settings"][key]
    resumed = gg.GradientMonitor(names=["a", "b"])
    resumed.load_state_dict(state)
    assert resumed.summary() == monitor.summary() and np.isnan(resumed.clip_rate())


def test_a_layer_that_appears_late_joins_and_is_judged_on_its_own_history():
    """An expert's first gradient at step 1, a layer unfrozen at step 30: they join,
    nothing raises, and a later spike of the late layer is found against its own
    history (not against NaN, and not from the steps before it existed)."""
    rng = np.random.default_rng(7)
    monitor = gg.GradientMonitor()
    found = []
    for step in range(80):
        grads = {"shared": rng.standard_normal(16).astype(np.float32)}
        if step >= 1:
            grads["expert.1"] = rng.standard_normal(16).astype(np.float32) * 0.1
        if step >= 30:
            grads["unfrozen"] = rng.standard_normal(16).astype(np.float32) * (1e4 if step == 70 else 10.0)
        found += monitor.update(grads, step=step, allow_missing=True)
    assert monitor.names == ["shared", "expert.1", "unfrozen"]
    assert [(f.step, f.layer, f.kind) for f in found] == [(70, "unfrozen", "exploding")]
    history = monitor.history()
    assert np.isnan(history["norm"][:30, 2]).all() and np.isfinite(history["norm"][30:, 2]).all()
    with pytest.raises(ValueError, match="missing"):  # a known layer left out needs allow_missing
        monitor.update({"shared": np.ones(4, np.float32)})
    resumed = gg.GradientMonitor()
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.names == monitor.names and resumed.summary() == monitor.summary()


def test_monitor_module_with_a_mixture_of_experts_whose_expert_starts_late():
    torch = pytest.importorskip("torch")
    from gradguard.torch import monitor_module

    torch.manual_seed(0)
    experts = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])
    monitor = gg.GradientMonitor()
    for step in range(12):
        experts.zero_grad(set_to_none=True)
        used = [0] if step == 0 else [0, 1] if step < 6 else [0, 1, 2]  # routing reaches experts 1 and 2 later
        sum(experts[i](torch.randn(8, 4)).pow(2).mean() for i in used).backward()
        monitor_module(monitor, experts, step=step)
    assert monitor.names[:2] == ["0.weight", "0.bias"] and len(monitor.names) == 6
    assert monitor.findings == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slow_growth_is_found_soon_after_it_passes_10x_its_long_run_level(seed):
    """10x over 190 steps (about 1.2 % a step, noisy): no step is a spike and the
    rolling median follows it, but the long-run level does not."""
    rng = np.random.default_rng(seed)
    norms = stationary(rng, 400, 3, sigma=0.2)
    growth = np.ones(400)
    growth[150:340] = 10.0 ** (np.arange(190) / 190.0)
    growth[340:] = 10.0 ** (1 + np.arange(60) / 190.0)
    norms[:, 1] *= growth
    _, findings = run(norms)
    assert [(f.layer, f.kind) for f in findings] == [("layer1", "exploding")]
    # the level passes 10x its long-run level (about 1, from the noisy early steps) at about step 340
    assert 325 <= findings[0].step <= 350 and "sustained growth" in findings[0].message
    assert findings[0].evidence["times"] > 10.0


@pytest.mark.parametrize("seed", [0, 1])
def test_healthy_drifts_are_not_sustained_growth(seed):
    """An early fall and a partial recovery (5x from the trough), a 4x slow rise,
    a learning-rate drop: no finding."""
    rng = np.random.default_rng(seed)
    steps = 1500
    t = np.arange(steps)
    fall_and_recover = 30.0 * np.exp(-t / 40.0) + np.where(t > 200, np.minimum(5.0, 1 + (t - 200) / 200.0), 1.0)
    slow_rise = 4.0 ** (t / steps)
    lr_drop = np.where(t < 700, 1.0, 0.3)
    norms = stationary(rng, steps, 3, sigma=0.25) * np.stack([fall_and_recover, slow_rise, lr_drop], axis=1)
    _, findings = run(norms)
    assert findings == []


def _loss_run(rng, steps=220, spike_at=None, rise_layer=None, rise_from=None, loss_factor=5.0):
    norms = stationary(rng, steps, 4, sigma=0.15)
    losses = 2.0 * np.exp(-np.arange(steps) / 150.0) * np.exp(rng.standard_normal(steps) * 0.05) + 0.3
    if rise_layer is not None:
        norms[rise_from : spike_at + 1, rise_layer] *= 30.0 ** np.linspace(0.3, 1.0, spike_at + 1 - rise_from)
    if spike_at is not None:
        losses[spike_at] *= loss_factor
    monitor = gg.GradientMonitor(names=[f"layer{i}" for i in range(4)], spike_z=1e9)  # the loss finding alone
    found = []
    for step in range(steps):
        grads = [layer_with_norm(rng, norms[step, i], 0.0) for i in range(4)]
        found += monitor.update(grads, step=step, loss=losses[step])
    return monitor, [f for f in found if f.kind == "loss_spike"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_normal_loss_noise_is_not_a_spike(seed):
    _, found = _loss_run(np.random.default_rng(seed))
    assert found == []


def test_a_loss_spike_names_the_layer_whose_gradient_rose_first():
    monitor, found = _loss_run(np.random.default_rng(4), spike_at=150, rise_layer=2, rise_from=146)
    assert [(f.step, f.layer, f.kind) for f in found] == [(150, "loss", "loss_spike")]
    evidence = found[0].evidence
    assert evidence["first_layer"] == "layer2" and 146 <= evidence["first_step"] <= 148
    assert "layer2's gradient rose first" in found[0].message
    resumed = gg.GradientMonitor(names=[f"layer{i}" for i in range(4)], spike_z=1e9)
    resumed.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert resumed.summary() == monitor.summary()


def test_a_loss_spike_without_a_rising_layer_is_a_bad_batch():
    _, found = _loss_run(np.random.default_rng(5), spike_at=120)
    assert [f.step for f in found] == [120] and found[0].evidence["first_layer"] is None
    assert "no layer's gradient rose" in found[0].message


def test_a_nan_loss_is_a_finding_at_once_and_a_bad_loss_is_refused():
    monitor = gg.GradientMonitor(names=["a"])
    assert monitor.update({"a": np.ones(3, np.float32)}, loss=float("nan"))[0].kind == "loss_spike"
    with pytest.raises(TypeError, match="loss"):
        monitor.update({"a": np.ones(3, np.float32)}, loss="high")
    assert monitor.summary()["steps"] == 1


def test_a_vector_whose_gradient_cancels_exactly_is_not_dead_units():
    """A WGAN critic's last bias: its gradient is mean(fake) - mean(real) of the same
    constant, exactly 0 every step. Dead units zero their weight matrix's gradient too."""
    rng = np.random.default_rng(9)
    monitor = gg.GradientMonitor(names=["critic.weight", "critic.bias", "dead.weight"])
    for step in range(20):
        monitor.update(
            {
                "critic.weight": rng.standard_normal((4, 4)).astype(np.float32),
                "critic.bias": np.zeros(4, np.float32),
                "dead.weight": np.zeros((4, 4), np.float32),
            },
            step=step,
        )
    assert [(f.layer, f.kind) for f in monitor.findings] == [("dead.weight", "dead")]


def test_column_medians_are_numpys_nanmedian_exactly():
    """The monitor's baselines take medians over the kept steps with their own
    sort (NumPy's nanmedian is masked-array slow on short columns): the same
    values bit for bit, NaN columns, even and odd counts and no rows included."""
    from gradguard.monitor.history import nanmedian_columns

    rng = np.random.default_rng(11)
    for steps in (0, 1, 2, 3, 16, 255, 256, 700):
        values = rng.standard_normal((steps, 9)) * 10.0 ** rng.integers(-8, 8, 9)
        values[rng.random(values.shape) < 0.3] = np.nan
        if steps:
            values[:, 0] = np.nan  # a layer with no history yet
            values[: steps // 2, 1] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(values, axis=0) if steps else np.full(9, np.nan)
        np.testing.assert_array_equal(nanmedian_columns(values), expected)
