"""AGC against NumPy transcriptions of timm's and Optax's rules; the torch adapter."""

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16

SHAPES = [(16, 8, 3, 3), (40, 30), (7,), (5, 4, 3), (1,), (300, 2), (1, 7), (1, 1, 1, 6), (3, 3, 4, 8)]


def reference_agc(params, grads, clipping, eps, unit_axis):
    out = []
    for param, grad in zip(params, grads):
        p, g = param.astype(np.float64), grad.astype(np.float64)
        if unit_axis == "first":  # timm's unitwise_norm
            axes = None if p.ndim <= 1 else tuple(range(1, p.ndim))
        elif np.squeeze(p).ndim <= 1:  # Optax's unitwise_norm: scalars and vectors
            axes = None
        elif p.ndim in (2, 3):  # IO and multi-head linear
            axes = (0,)
        else:  # HWIO convolutions
            axes = tuple(range(p.ndim - 1))
        param_norm = np.sqrt((p**2).sum(axis=axes, keepdims=True))
        grad_norm = np.sqrt((g**2).sum(axis=axes, keepdims=True))
        limit = clipping * np.maximum(param_norm, eps)
        out.append(np.where(grad_norm < limit, g, g * (limit / np.maximum(grad_norm, 1e-6))))
    return out


@pytest.mark.parametrize("unit_axis", ["first", "last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agc_matches_reference(simd_target, unit_axis, dtype):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    # gradient scales spread around the limit: some units clipped, some not
    grads = [(rng.standard_normal(s) * rng.choice([1e-3, 0.05], size=s)).astype(dtype) for s in SHAPES]
    expected = reference_agc(params, grads, 0.02, 1e-3, unit_axis)
    fractions = gg.agc(params, grads, clipping=0.02, unit_axis=unit_axis)
    for grad, wanted in zip(grads, expected):
        np.testing.assert_allclose(grad, wanted, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-12)
    assert ((fractions > 0) & (fractions <= 1)).any() and fractions.shape == (len(SHAPES),)


def test_agc_zero_weights_use_eps_and_validation():
    params = [np.zeros((3, 4), np.float32)]
    grads = [np.ones((3, 4), np.float32)]
    gg.agc(params, grads, clipping=0.1, eps=1e-3)
    np.testing.assert_allclose(np.linalg.norm(grads[0], axis=1), 1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unit_axis"):
        gg.agc(params, grads, unit_axis="middle")
    with pytest.raises(ValueError, match="shape"):
        gg.agc(params, [np.ones((4, 3), np.float32)])
    frozen = np.ones((3, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gg.agc(params, [frozen])


def test_torch_adapter_matches_torch():
    torch = pytest.importorskip("torch")
    from gradguard.torch import clip_grad_norm_, monitor_module

    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    twin = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.ReLU(), torch.nn.Linear(30, 5))
    twin.load_state_dict(model.state_dict())
    x = torch.randn(64, 20)
    for network in (model, twin):
        network(x).square().sum().backward()
    total = clip_grad_norm_(model.parameters(), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    assert float(total) == pytest.approx(float(expected), rel=1e-6)
    for ours, theirs in zip(model.parameters(), twin.parameters()):
        np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-6, atol=1e-9)
    monitor = gg.GradientMonitor()
    assert monitor_module(monitor, model) == []
    assert monitor.names == [name for name, _ in model.named_parameters()]
    if BFLOAT16 is not None:
        weights = torch.nn.Parameter(torch.ones(8, dtype=torch.bfloat16))
        weights.grad = torch.full((8,), 3.0, dtype=torch.bfloat16)
        total = clip_grad_norm_([weights], 1.0)
        assert total.dtype == torch.bfloat16  # torch returns the norm in the gradients' dtype
        assert float(total) == pytest.approx(3.0 * 8**0.5, rel=1e-2)
        assert float(weights.grad.float().norm()) == pytest.approx(1.0, rel=1e-2)


def test_torch_module_explains_a_missing_torch(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "gradguard.torch", raising=False)
    with pytest.raises(ImportError, match="gradguard.torch needs PyTorch"):
        importlib.import_module("gradguard.torch")
    monkeypatch.delitem(sys.modules, "gradguard.torch", raising=False)


def test_gradguard_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, gradguard; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
