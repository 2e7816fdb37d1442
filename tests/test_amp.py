"""Mixed precision: gg.unscale_ and gg.LossScaler against the reference, on every SIMD target and dtype."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import DTYPE_IDS, DTYPES
from gradguard import reference


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("poison", [None, np.nan, np.inf, -np.inf])
def test_unscale_matches_the_reference(simd_target, dtype, poison):
    rng = np.random.default_rng(7)
    grads = [(rng.standard_normal(size) * 1000).astype(dtype) for size in (0, 1, 17, 65537, 300)]
    if poison is not None:
        grads[3][12345] = poison
    expected, expected_found = reference.unscale(grads, 1 / 1024)
    found = gg.unscale_(grads, 1 / 1024)
    assert found == expected_found == (poison is not None)
    for actual, wanted in zip(grads, expected):
        np.testing.assert_array_equal(actual, wanted)


def test_loss_scaler_follows_the_reference_rule():
    rng = np.random.default_rng(3)
    overflows = rng.random(500) < 0.05
    scaler = gg.LossScaler(init_scale=2.0**10, growth_interval=7)
    expected = reference.LossScaler(init_scale=2.0**10, growth_interval=7)
    for found_inf in overflows:
        scaler.update(bool(found_inf))
        expected.update(bool(found_inf))
        assert scaler.get_scale() == expected.scale


def test_the_clip_eps_is_torchs():
    assert gg.CLIP_EPS == reference.CLIP_EPS == 1e-6
    assert gg.clip_coefficient(1.0, 3.0) == reference.clip_coefficient(1.0, 3.0)
    assert gg.clip_coefficient(1.0, 0.0) == 1.0 and np.isnan(gg.clip_coefficient(1.0, np.nan))


@pytest.mark.parametrize("scale", [0.0, math.nan, -1.0, math.inf])
def test_loss_scaler_state_refused(scale):
    scaler = gg.LossScaler()
    state = scaler.state_dict()
    state["scale"] = scale
    with pytest.raises(ValueError):
        scaler.load_state_dict(state)
    assert scaler.get_scale() == 2.0**16


def test_loss_scaler_never_grows_past_float32():
    scaler = gg.LossScaler(init_scale=1e38, growth_factor=16, growth_interval=1)
    for _ in range(5):
        scaler.update(False)
    assert scaler.get_scale() == 1e38
    scaler.update(True)
    assert scaler.get_scale() == 0.5e38


def test_unscale_matches_torch_and_reports_overflow(simd_target):
    grads = [np.array([1.0, 2.0, 3.0], np.float32), np.array([4.0, 65504.0], np.float16)]
    assert gg.unscale_(grads, 0.5) is False
    np.testing.assert_array_equal(grads[0], [0.5, 1.0, 1.5])
    np.testing.assert_array_equal(grads[1], np.array([2.0, 32752.0], np.float16))
    with_inf = [np.ones(100, np.float32), np.array([1.0, np.inf], np.float32)]
    assert gg.unscale_(with_inf, 0.25) is True
    assert with_inf[0][0] == 0.25 and np.isinf(with_inf[1][1])
    torch = pytest.importorskip("torch")
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    values[77] = np.nan
    tensor = torch.tensor(values.copy())
    found = torch.zeros(1)
    torch._amp_foreach_non_finite_check_and_unscale_([tensor], found, torch.tensor(0.125))
    assert gg.unscale_([values], 0.125) is bool(found.item())
    np.testing.assert_array_equal(values, tensor.numpy())


def test_loss_scaler_rule_matches_torch_grad_scaler():
    scaler = gg.LossScaler(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    history = []
    for found in [False, False, False, True, False, False, False, False]:
        scaler.update(found)
        history.append(scaler.get_scale())
    assert history == [8.0, 8.0, 16.0, 8.0, 8.0, 8.0, 16.0, 16.0]
    assert scaler.scale(np.float32(2.0)) == 32.0
    restored = gg.LossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict()
    torch = pytest.importorskip("torch")
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler missing")
    reference_scaler = torch.amp.GradScaler(
        "cpu", init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3
    )
    ours = gg.LossScaler(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
    reference_scaler.scale(torch.ones(1))  # GradScaler creates its scale lazily
    parameter = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([parameter], lr=0.0)
    for found in [False, False, False, True, False, False, False]:
        parameter.grad = torch.tensor([math.inf if found else 1.0])
        reference_scaler.step(optimizer)
        reference_scaler.update()
        ours.update(found)
        assert ours.get_scale() == reference_scaler.get_scale()
