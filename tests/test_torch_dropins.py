"""gradguard.torch's drop-ins against torch.nn.utils itself, on the same gradients."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradguard as gg  # noqa: E402
from conftest import BFLOAT16  # noqa: E402
from gradguard import torch as ggt  # noqa: E402


def make_parameters(seed, layouts=("contiguous", "channels_last", "transposed", "strided", "none")):
    """Parameters whose .grad come in every layout torch produces, plus one without a gradient."""
    generator = torch.Generator().manual_seed(seed)
    parameters = []
    for layout in layouts:
        if layout == "channels_last":
            grad = torch.randn(4, 3, 5, 6, generator=generator).to(memory_format=torch.channels_last)
        elif layout == "transposed":
            grad = torch.randn(7, 9, generator=generator).t()
        elif layout == "strided":
            grad = torch.randn(10, 8, generator=generator)[:, ::2]  # not dense: a copy is written back
        else:
            grad = torch.randn(33, generator=generator)
        parameter = torch.nn.Parameter(torch.zeros(grad.shape))
        parameter.grad = None if layout == "none" else grad * 3.0
        parameters.append(parameter)
    return parameters


def twins(seed):
    ours, theirs = make_parameters(seed), make_parameters(seed)
    return ours, theirs


def assert_same_grads(ours, theirs, rtol=1e-6):
    for mine, reference in zip(ours, theirs):
        if reference.grad is None:
            assert mine.grad is None
            continue
        assert mine.grad.stride() == reference.grad.stride()  # the layout is kept
        torch.testing.assert_close(mine.grad, reference.grad, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, "inf", 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = twins(0)
    total = ggt.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert total.dtype == expected.dtype
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=0)
    assert_same_grads(ours, theirs)


def test_get_total_norm_and_clip_grads_with_norm_match_torch():
    ours, theirs = twins(1)
    grads = [p.grad for p in ours if p.grad is not None]
    total = ggt.get_total_norm(grads, norm_type=2.0)
    expected = torch.nn.utils.get_total_norm([p.grad for p in theirs if p.grad is not None], norm_type=2.0)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=0)
    ggt.clip_grads_with_norm_(ours, 1.0, total)
    torch.nn.utils.clip_grads_with_norm_(theirs, 1.0, expected)
    assert_same_grads(ours, theirs)
    assert float(ggt.get_total_norm([])) == 0.0


@pytest.mark.parametrize("clip_value", [0.5, torch.tensor(2.0), -0.25])
def test_clip_grad_value_matches_torch(clip_value):
    ours, theirs = twins(2)
    ours[0].grad[0] = float("nan")
    theirs[0].grad[0] = float("nan")
    ggt.clip_grad_value_(ours, clip_value)
    torch.nn.utils.clip_grad_value_(theirs, clip_value)
    for mine, reference in zip(ours, theirs):
        if reference.grad is not None:
            torch.testing.assert_close(mine.grad, reference.grad, equal_nan=True)


def test_nonfinite_norm_raises_runtime_error_and_changes_nothing():
    ours = make_parameters(3, layouts=("contiguous", "channels_last"))
    ours[1].grad[0, 0, 0, 0] = float("inf")
    before = [p.grad.clone() for p in ours]
    with pytest.raises(RuntimeError):
        ggt.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        ggt.get_total_norm([p.grad for p in ours], error_if_nonfinite=True)
    for parameter, grad in zip(ours, before):
        assert torch.equal(parameter.grad, grad)


def test_tensor_scalars_and_a_single_tensor():
    ours, theirs = twins(4)
    total = ggt.clip_grad_norm_(ours[0], torch.tensor(1.0), norm_type=torch.tensor(2.0))
    expected = torch.nn.utils.clip_grad_norm_(theirs[0], 1.0)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(ours[0].grad, theirs[0].grad)


def test_no_gradients_and_cuda_boundary():
    parameter = torch.nn.Parameter(torch.ones(3))
    assert float(ggt.clip_grad_norm_([parameter], 1.0)) == 0.0
    ggt.clip_grad_value_([parameter], 1.0)
    meta = torch.nn.Parameter(torch.ones(3, device="meta"))
    meta.grad = torch.ones(3, device="meta")
    # a tensor NumPy cannot view takes the device path: torch's kernels, as torch's clip does
    assert ggt.clip_grad_norm_([meta], 1.0).device.type == "meta"


def test_half_precision_gradients_return_their_dtype():
    parameter = torch.nn.Parameter(torch.zeros(64, dtype=torch.float16))
    parameter.grad = torch.full((64,), 2.0, dtype=torch.float16)
    total = ggt.clip_grad_norm_([parameter], 1.0)
    assert total.dtype == torch.float16 and float(total) == 16.0
    np.testing.assert_allclose(parameter.grad.float().numpy(), 0.125, rtol=1e-3)


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


def test_torch_drop_in_raises_a_runtime_error():
    torch = pytest.importorskip("torch")
    from gradguard.torch import clip_grad_norm_

    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.tensor([1.0, math.inf, 0.0])
    with pytest.raises(RuntimeError):
        clip_grad_norm_([parameter], 1.0, error_if_nonfinite=True)
    with pytest.raises(FloatingPointError):
        clip_grad_norm_([parameter], 1.0, error_if_nonfinite=True)
