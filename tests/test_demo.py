"""The demo's network (backward against finite differences) and a short demo run."""

import numpy as np
import pytest

from gradguard import demo
from gradguard.demo.mlp import MLP, two_spirals


@pytest.mark.parametrize(
    "activation, residual, layer_norm",
    [("tanh", False, False), ("relu", True, False), ("sigmoid", False, True), ("tanh", True, True)],
)
def test_backward_matches_finite_differences(activation, residual, layer_norm):
    rng = np.random.default_rng(0)
    net = MLP([2, 6, 6, 6, 2], activation, residual, layer_norm, dtype=np.float64)
    for weight in net.weights:
        weight[...] = rng.standard_normal(weight.shape) * 0.7
    for bias in net.biases:
        bias[...] = rng.standard_normal(bias.shape) * 0.1
    x, labels = rng.standard_normal((7, 2)), rng.integers(0, 2, 7)
    _, _, grads = net.loss_and_gradients(x, labels)
    for name, array in net.parameters().items():
        direction = rng.standard_normal(array.shape)
        array += 1e-6 * direction
        plus = net.loss_and_gradients(x, labels)[0]
        array -= 2e-6 * direction
        minus = net.loss_and_gradients(x, labels)[0]
        array += 1e-6 * direction
        assert np.sum(grads[name] * direction) == pytest.approx((plus - minus) / 2e-6, rel=1e-6, abs=1e-10)


def test_two_spirals_are_balanced_and_reproducible():
    x, y = two_spirals(1000, seed=3)
    assert x.shape == (1000, 2) and y.mean() == 0.5
    np.testing.assert_array_equal(x, two_spirals(1000, seed=3)[0])


def test_short_demo_run_writes_table_and_pictures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert (
        demo.main(["--depths", "3", "12", "--steps", "25", "--configs", "0", "2", "8", "9", "--out", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "sigmoid + N(0, 0.01)" in out and "8 runs" in out
    rows = [line for line in out.splitlines() if line.startswith("sigmoid")]
    assert "vanishing" in rows[-1]  # depth 12 with tiny weights: flagged
    for name in ("gradient_flow_at_init.png", "loss_with_and_without_clipping.png"):
        assert (tmp_path / name).stat().st_size > 10_000


def test_demo_is_reproducible(tmp_path, capsys):
    arguments = ["--depths", "4", "--steps", "15", "--configs", "1", "8", "--out", str(tmp_path)]
    demo.main(arguments)
    first = [line for line in capsys.readouterr().out.splitlines() if not line.endswith(" s")]
    demo.main(arguments)
    second = [line for line in capsys.readouterr().out.splitlines() if not line.endswith(" s")]
    assert first == second
