"""GradientMonitor: layers missing on a step (allow_missing), the flat dict for
any logger (latest) and TensorBoard (log_to)."""

import numpy as np
import pytest

import gradguard as gg


def _grads(rng, names, scale=1.0):
    return {name: (rng.standard_normal((4, 4)) * scale).astype(np.float32) for name in names}


def test_missing_layers_are_nan_for_the_step_and_never_a_finding():
    rng = np.random.default_rng(0)
    monitor = gg.GradientMonitor(names=["a", "b", "c"], patience=3)
    for step in range(40):
        names = ["a", "c"] if step % 2 else ["a", "b", "c"]
        assert monitor.update(_grads(rng, names), step=step, allow_missing=True) == []
    norms = monitor.history()["norm"]
    assert np.isnan(norms[1::2, 1]).all() and np.isfinite(norms[0::2, 1]).all()
    assert np.isfinite(norms[:, [0, 2]]).all()


def test_a_present_layer_is_still_judged_when_others_are_missing():
    rng = np.random.default_rng(1)
    monitor = gg.GradientMonitor(names=["a", "b", "c"], patience=2)
    found = []
    for step in range(10):
        grads = _grads(rng, ["a", "c"])
        grads["c"][0, 0] = np.nan if step >= 5 else grads["c"][0, 0]
        found += monitor.update(grads, step=step, allow_missing=True)
    assert [(f.layer, f.kind, f.step) for f in found] == [("c", "exploding", 5)]


def test_missing_layers_refused_without_allow_missing_and_unknown_names_join():
    monitor = gg.GradientMonitor(names=["a", "b"])
    one = {"a": np.ones(3, np.float32)}
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        monitor.update(one)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):  # a new name does not excuse a missing one
        monitor.update({"a": np.ones(3, np.float32), "z": np.ones(3, np.float32)})
    assert monitor.summary()["steps"] == 0 and monitor.names == ["a", "b"]  # refused updates changed nothing
    monitor.update(one, allow_missing=True)
    assert monitor.summary()["steps"] == 1
    monitor.update({"a": np.ones(3, np.float32), "z": np.ones(3, np.float32)}, allow_missing=True)
    assert monitor.names == ["a", "b", "z"] and monitor.summary()["layers"] == 3


def test_latest_is_a_flat_dict_without_nan():
    monitor = gg.GradientMonitor(names=["w", "b"])
    assert monitor.latest() == {}
    monitor.update({"w": np.full((2, 2), 3.0, np.float32)}, step=7, allow_missing=True)
    flat = monitor.latest()
    assert flat["grad_norm/w"] == pytest.approx(6.0) and flat["grad_abs_mean/w"] == pytest.approx(3.0)
    assert "grad_norm/b" not in flat and "update_ratio/w" not in flat
    assert flat["gradguard/step"] == 7 and flat["gradguard/findings"] == 0
    assert all(isinstance(v, (int, float)) and v == v for v in flat.values())


class _Writer:
    def __init__(self):
        self.scalars, self.texts = [], []

    def add_scalar(self, tag, value, global_step):
        self.scalars.append((tag, value, global_step))

    def add_text(self, tag, text, global_step):
        self.texts.append((tag, text, global_step))


def test_log_to_writes_scalars_and_new_findings_once():
    monitor = gg.GradientMonitor(names=["w"])
    writer = _Writer()
    monitor.log_to(writer)  # nothing recorded yet: nothing written
    assert writer.scalars == []
    monitor.update({"w": np.full(4, np.inf, np.float32)}, step=0)
    monitor.log_to(writer)
    assert ("gradguard/findings", 1, 0) in writer.scalars
    assert len(writer.texts) == 1 and "NaN/inf" in writer.texts[0][1]
    monitor.update({"w": np.ones(4, np.float32)}, step=1)
    monitor.log_to(writer, step=100)
    assert ("grad_norm/w", 2.0, 100) in writer.scalars and len(writer.texts) == 1


def test_log_to_a_real_tensorboard_writer(tmp_path):
    pytest.importorskip("tensorboard")
    tensorboard = pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monitor = gg.GradientMonitor(names=["layer.weight"])
    writer = tensorboard.SummaryWriter(str(tmp_path))
    for step in range(3):
        monitor.update({"layer.weight": np.full(4, step + 1.0, np.float32)}, step=step)
        monitor.log_to(writer)
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    norms = [(e.step, e.value) for e in events.Scalars("grad_norm/layer.weight")]
    assert norms == [(0, 2.0), (1, 4.0), (2, 6.0)]


def test_update_stats_records_what_update_records():
    rng = np.random.default_rng(0)
    steps = [
        {f"layer{i}": rng.standard_normal(100 * (i + 1)).astype(np.float32) * 0.5**s for i in range(3)}
        for s in range(4)
    ]
    from_arrays, from_stats = gg.GradientMonitor(), gg.GradientMonitor()
    for grads in steps:
        findings = from_arrays.update(grads)
        assert from_stats.update_stats(gg.grad_stats(grads)) == findings
    for key in ("norm", "abs_mean", "std", "zero_fraction"):
        np.testing.assert_array_equal(from_arrays.history()[key], from_stats.history()[key])
    reordered = dict(reversed(list(steps[0].items())))
    from_stats.update_stats(gg.grad_stats(reordered))  # matched by name
    np.testing.assert_array_equal(from_stats.history()["norm"][-1], from_arrays.history()["norm"][0])
    partial = {"layer0": steps[0]["layer0"]}
    with pytest.raises(ValueError, match="layer1"):
        from_stats.update_stats(gg.grad_stats(partial))
    from_stats.update_stats(gg.grad_stats(partial), allow_missing=True)
    assert np.isnan(from_stats.history()["norm"][-1][1])
    with pytest.raises(TypeError, match="GradStats"):
        from_stats.update_stats(steps[0])
