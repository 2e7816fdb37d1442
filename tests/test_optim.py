"""Fused optimiser steps, unscale_ and LossScaler: against torch.optim / torch.amp
(when installed) and the NumPy reference, on every SIMD target."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16
from gradguard import reference

SHAPES = [(7, 5), (33,), (300, 17), (1,)]

CONFIGS = [
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True)),
    ("adamw", dict(lr=0.01, weight_decay=0.1)),
    ("rmsprop", dict(lr=0.01)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True, weight_decay=0.1)),
]
CLASSES = {"sgd": gg.optim.SGD, "adam": gg.optim.Adam, "adamw": gg.optim.AdamW, "rmsprop": gg.optim.RMSprop}
DEFAULTS = {
    "sgd": {},
    "adam": dict(betas=(0.9, 0.999), eps=1e-8),
    "adamw": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
    "rmsprop": dict(alpha=0.99, eps=1e-8),
}
STATE_NAMES = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    "rmsprop": ("square_avg", "momentum_buffer", "grad_avg"),
}


def _gradient_sequence(seed, steps, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[(rng.standard_normal(s) * 3).astype(dtype) for s in shapes] for _ in range(steps)]


@pytest.mark.parametrize("clip", [None, 1.0])
@pytest.mark.parametrize("kind, hyper", CONFIGS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONFIGS)])
def test_trajectory_matches_numpy_reference(simd_target, kind, hyper, clip):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s) for s in SHAPES]  # float64: the reference is exact
    expected = [p.copy() for p in params]
    state = {name: [np.zeros(s) for s in SHAPES] for name in STATE_NAMES[kind]}
    optimizer = CLASSES[kind](params, max_grad_norm=clip, **hyper)
    for step, grads in enumerate(_gradient_sequence(4, 30, dtype=np.float64), start=1):
        norm = optimizer.step(grads)
        scale = 1.0
        if clip is not None:
            total = reference.global_norm(grads)
            assert norm == pytest.approx(total, rel=1e-12)
            scale = min(1.0, clip / (total + 1e-6))
        expected, state = reference.optimizer_step(
            kind, expected, grads, state, step, {**DEFAULTS[kind], **hyper}, scale
        )
    for actual, wanted in zip(params, expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("kind, hyper", CONFIGS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONFIGS)])
def test_trajectory_matches_torch(kind, hyper, clip):
    torch = pytest.importorskip("torch")
    torch_classes = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    torch_params = [torch.nn.Parameter(torch.tensor(p.copy())) for p in params]
    optimizer = CLASSES[kind](params, max_grad_norm=clip, **hyper)
    torch_optimizer = torch_classes[kind](torch_params, **hyper)
    for grads in _gradient_sequence(6, 50):
        for parameter, grad in zip(torch_params, grads):
            parameter.grad = torch.tensor(grad)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(torch_params, clip)
        torch_optimizer.step()
        optimizer.step(grads)
    for actual, parameter in zip(params, torch_params):
        wanted = parameter.detach().numpy()
        np.testing.assert_allclose(actual, wanted, rtol=2e-5, atol=2e-5 * np.abs(wanted).max())


@pytest.mark.parametrize("grad_dtype", ["float16", "bfloat16"])
def test_half_gradients_with_float32_master_parameters(simd_target, grad_dtype):
    dtype = np.float16 if grad_dtype == "float16" else BFLOAT16
    if dtype is None:
        pytest.skip("ml_dtypes is not installed")
    rng = np.random.default_rng(8)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    expected = [p.astype(np.float64) for p in params]
    state = {name: [np.zeros(s) for s in SHAPES] for name in STATE_NAMES["adamw"]}
    optimizer = gg.optim.AdamW(params, lr=0.01, max_grad_norm=2.0)
    for step, grads in enumerate(_gradient_sequence(9, 10, dtype=dtype), start=1):
        norm = optimizer.step(grads)
        scale = min(1.0, 2.0 / (norm + 1e-6))
        expected, state = reference.optimizer_step(
            "adamw",
            expected,
            [g.astype(np.float64) for g in grads],
            state,
            step,
            dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2),
            scale,
        )
    for actual, wanted in zip(params, expected):
        np.testing.assert_allclose(actual, wanted, rtol=1e-4, atol=1e-5)


def test_step_with_loss_scaler_skips_on_overflow_and_unscales_otherwise(simd_target):
    params = [np.ones(10, np.float32)]
    scaler = gg.LossScaler(init_scale=1024.0)
    optimizer = gg.optim.SGD(params, lr=0.1, max_grad_norm=100.0)
    report = optimizer.step([np.full(10, np.inf, np.float16)], loss_scaler=scaler, return_report=True)
    assert report.skipped and report.nonfinite == (0,)
    np.testing.assert_array_equal(params[0], 1.0)
    assert scaler.get_scale() == 512.0
    report = optimizer.step([np.full(10, 512.0, np.float16)], loss_scaler=scaler, return_report=True)
    assert not report.skipped and report.grad_norm == pytest.approx(math.sqrt(10))
    np.testing.assert_allclose(params[0], 1.0 - 0.1 * 1.0, rtol=1e-6)  # unscaled gradient 1.0


def test_bad_input_changes_nothing():
    params = [np.ones(4, np.float32), np.ones(3, np.float32)]
    optimizer = gg.optim.Adam(params)
    with pytest.raises(ValueError, match="1 arrays for 2 params"):
        optimizer.step([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match=r"grads\[1\] has shape"):
        optimizer.step([np.ones(4, np.float32), np.ones(4, np.float32)])
    with pytest.raises(TypeError, match=r"params\[1\] is float32 with a float64 gradient"):
        optimizer.step([np.ones(4, np.float32), np.ones(3, np.float64)])
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        optimizer.step([np.ones(4, np.int64), np.ones(3, np.float32)])
    np.testing.assert_array_equal(params[0], 1.0)
    assert optimizer.step_count == 0
    frozen = np.ones(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gg.optim.SGD([frozen], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        gg.optim.SGD(params, lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        gg.optim.Adam(params, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="eps"):
        gg.optim.Adam(params, eps=math.nan)
    with pytest.raises(ValueError, match="nesterov"):
        gg.optim.SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        gg.optim.SGD([np.ones(3, np.float16)], lr=0.1)


@pytest.mark.parametrize(
    "make",
    [
        lambda params: gg.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01),
        lambda params: gg.optim.Adam(params, lr=0.01, amsgrad=True, max_grad_norm=1.0),
        lambda params: gg.optim.AdamW(params, lr=0.01),
        lambda params: gg.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
    ],
    ids=["sgd", "adam", "adamw", "rmsprop"],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_reports_the_update_actually_applied(simd_target, make, dtype):
    rng = np.random.default_rng(7)
    sizes = [1, 7, 17, 100, 65537, 0]
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    optimizer = make(params)
    for _ in range(3):
        before = [p.astype(np.float64) for p in params]
        grads = [rng.standard_normal(n).astype(dtype) for n in sizes]
        report = optimizer.step(grads, return_report=True)
        expected_update = [np.linalg.norm(p.astype(np.float64) - b) for p, b in zip(params, before)]
        expected_param = [np.linalg.norm(p.astype(np.float64)) for p in params]
        np.testing.assert_allclose(report.update_norms, expected_update, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(report.param_norms, expected_param, rtol=1e-9, atol=1e-300)
        ratio = report.update_ratio
        assert np.isnan(ratio[-1]) and np.all(ratio[:-1] > 0)
    assert optimizer.step(grads) is None or isinstance(optimizer.step(grads), float)


def test_skipped_step_reports_no_update():
    params = [np.ones(5, np.float32)]
    report = gg.optim.SGD(params, lr=0.1).step([np.full(5, np.inf, np.float32)], gg.LossScaler(), return_report=True)
    assert report.skipped and report.update_norms is None and report.update_ratio is None


def test_optimiser_snapshots_its_parameters():
    first, second = np.ones(4, np.float32), np.ones(3, np.float32)
    params = [first, second]
    optimizer = gg.optim.SGD(params, lr=0.5)
    params.append(np.ones(7, np.float32))  # the caller's list changes afterwards
    params.reverse()
    optimizer.step([np.ones(4, np.float32), np.ones(3, np.float32)])
    np.testing.assert_array_equal(first, np.full(4, 0.5, np.float32))
    np.testing.assert_array_equal(second, np.full(3, 0.5, np.float32))
    assert [p is q for p, q in zip(optimizer.params, [first, second])] == [True, True]


def test_optimizer_matches_gradient_dicts_by_name():
    params = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    optimizer = gg.optim.SGD(params, lr=1.0)
    optimizer.step({"b": np.full(3, 2.0, np.float32), "a": np.full(3, 0.5, np.float32)})  # reversed
    np.testing.assert_array_equal(params["a"], 0.5)
    np.testing.assert_array_equal(params["b"], -1.0)
    with pytest.raises(ValueError, match=r"missing \['b'\].*unexpected \['c'\]"):
        optimizer.step({"a": np.ones(3, np.float32), "c": np.ones(3, np.float32)})
