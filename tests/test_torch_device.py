"""gradguard.torch's device path (torch's kernels on the tensors' own device,
one transfer of statistics a step) against the core's path and torch itself.

Here every device test runs on CPU tensors sent through the device path
(`device_path()`), and again on CUDA when torch sees a GPU (skipped with the
reason otherwise); tools/gpu_tests.sh runs this file on a GPU machine.
Tolerance: statistics to float32 rounding (rtol 2e-6 on norms and moments,
counts exact); NaN/inf semantics identical."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradguard as gg  # noqa: E402
from gradguard.bench import detection  # noqa: E402
from gradguard.stats import STATS_FIELDS  # noqa: E402
from gradguard.torch import (  # noqa: E402  # noqa: E402
    GradGuardHook,
    Guard,
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    device,
    device_path,
    get_total_norm,
    monitor_module,
)

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (tools/gpu_tests.sh)"),
    ),
]


@pytest.fixture(params=DEVICES)
def on(request):
    """The device the test's tensors live on; CPU tensors are forced through the device path."""
    with device_path(True):
        yield torch.device(request.param)


def _adversarial(rng):
    """Arrays that straddle what the fast path handles: NaN/inf, empty, huge, tiny, constant, all dtypes."""
    arrays = [
        rng.standard_normal(1000).astype(np.float32),
        np.zeros(0, np.float32),
        (rng.standard_normal(50) * 1e25).astype(np.float32),  # squares beyond float32
        (rng.standard_normal(50) * 1e-30).astype(np.float32),  # squares below float32
        np.array([1, np.nan, np.inf, 0, -2, -np.inf], np.float32),
        np.array([np.nan] * 4, np.float32),
        rng.standard_normal(300),
        np.zeros(10, np.float32),
        rng.standard_normal(64).astype(np.float16),
        np.full(7, 3.0, np.float32),
        1.0 + rng.standard_normal(500).astype(np.float32) * 1e-4,  # a mean far above the spread
    ]
    return arrays


def _assert_stats_close(actual, expected, fields=STATS_FIELDS):
    for field in fields:
        a, b = getattr(actual, field), getattr(expected, field)
        if field in ("numel", "n_nan", "n_inf", "n_zero"):
            np.testing.assert_array_equal(a, b, err_msg=field)
        else:
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=0, equal_nan=True, err_msg=field)
    if math.isnan(expected.global_norm):
        assert math.isnan(actual.global_norm)
    else:
        assert actual.global_norm == pytest.approx(expected.global_norm, rel=2e-6)


def test_device_statistics_are_grad_stats_to_float32_rounding(on):
    rng = np.random.default_rng(0)
    for _ in range(3):
        arrays = _adversarial(rng)
        tensors = [torch.from_numpy(a.copy()).to(on) for a in arrays]
        expected, full = gg.grad_stats(arrays), device.device_grad_stats(tensors)
        _assert_stats_close(full, expected)
        np.testing.assert_array_equal(full.ndim, expected.ndim)
        subset = device.device_grad_stats(tensors, full=False)
        _assert_stats_close(subset, expected, ("numel", "n_nan", "n_inf", "n_zero", "l2"))
        assert np.isnan(subset.std).all() and np.isnan(subset.abs_mean).all()
        norms_only = device.device_grad_stats(tensors, full=False, count_zeros=False)
        _assert_stats_close(norms_only, expected, ("numel", "n_nan", "n_inf", "l2"))
        # zeros are counted only where the tensor is all zero (or was recomputed exactly), else -1
        counted = norms_only.n_zero >= 0
        np.testing.assert_array_equal(norms_only.n_zero[counted], expected.n_zero[counted])
        assert counted[expected.n_zero == expected.numel].all() and not counted[0]


def test_bfloat16_statistics(on):
    rng = np.random.default_rng(1)
    values = torch.from_numpy(rng.standard_normal(4096).astype(np.float32)).to(torch.bfloat16)
    expected = gg.grad_stats([values.float().numpy()])
    _assert_stats_close(device.device_grad_stats([values.to(on)]), expected)


def test_a_healthy_step_is_one_transfer_and_a_sick_one_two():
    rng = np.random.default_rng(2)
    healthy = [torch.from_numpy(rng.standard_normal(100).astype(np.float32)) for _ in range(5)]
    before = device.transfer_count()
    device.device_grad_stats(healthy)
    assert device.transfer_count() - before == 1
    sick = healthy + [torch.tensor([1.0, float("nan")])]
    before = device.transfer_count()
    device.device_grad_stats(sick)
    assert device.transfer_count() - before == 2  # the rare exact pass, for the sick tensor only


def _model(on, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 3)).to(on)
    return model


def _backward(model, on, scale=1.0):
    x = torch.randn(16, 8, generator=torch.Generator().manual_seed(3)).to(on)
    (model(x).pow(2).sum() * scale).backward()


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0])
def test_drop_ins_on_the_device_are_torch(on, norm_type):
    ours, theirs = _model(on), _model(on)
    for model in (ours, theirs):
        _backward(model, on, scale=100.0)
    total = clip_grad_norm_(ours.parameters(), 0.5, norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5, norm_type)
    assert total.device == expected.device and total.dtype == expected.dtype
    torch.testing.assert_close(total, expected)
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad)
    torch.testing.assert_close(
        get_total_norm([p.grad for p in ours.parameters()], norm_type),
        torch.nn.utils.get_total_norm([p.grad for p in theirs.parameters()], norm_type),
    )
    clip_grads_with_norm_(ours.parameters(), 0.1, torch.tensor(3.0, device=on))
    torch.nn.utils.clip_grads_with_norm_(theirs.parameters(), 0.1, torch.tensor(3.0, device=on))
    clip_grad_value_(ours.parameters(), 1e-3)
    torch.nn.utils.clip_grad_value_(theirs.parameters(), 1e-3)
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine.grad, reference.grad)


def test_drop_ins_keep_torchs_nonfinite_semantics(on):
    ours, theirs = _model(on), _model(on)
    for model in (ours, theirs):
        _backward(model, on)
        next(model.parameters()).grad[0, 0] = float("nan")
    assert torch.isnan(clip_grad_norm_(ours.parameters(), 1.0))
    assert torch.isnan(torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(ours.parameters(), 1.0, error_if_nonfinite=True)


def test_clipping_alone_never_transfers(on):
    model = _model(on)
    _backward(model, on, scale=100.0)
    before = device.transfer_count()
    clip_grad_norm_(model.parameters(), 1.0)
    clip_grad_value_(model.parameters(), 0.1)
    assert device.transfer_count() == before


def _hook_run(on, forced, steps=6, max_norm=0.5):
    model = _model(on)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with device_path(forced):
        hook = GradGuardHook(model, optimizer=optimizer, max_norm=max_norm)
        transfers = []
        for step in range(steps):
            optimizer.zero_grad()
            _backward(model, on, scale=10.0 if step == 3 else 1.0)
            before = device.transfer_count()
            optimizer.step()
            transfers.append(device.transfer_count() - before)
    return model, hook, transfers


def test_the_hook_on_the_device_is_one_transfer_a_step_and_matches_the_core(on):
    model, hook, transfers = _hook_run(on, True)
    assert transfers == [1] * len(transfers)
    reference, reference_hook, _ = _hook_run(torch.device("cpu"), False)
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine.detach().cpu(), theirs.detach(), rtol=1e-5, atol=1e-6)
    ours, expected = hook.monitor.history(), reference_hook.monitor.history()
    np.testing.assert_allclose(ours["norm"], expected["norm"], rtol=2e-6)
    # the monitor's dead_fraction is 1: the device path counts zeros only where a layer is all zero
    assert np.isnan(ours["zero_fraction"]).all() and np.isnan(ours["abs_mean"]).all()
    assert [(f.step, f.layer, f.kind) for f in hook.monitor.findings] == [
        (f.step, f.layer, f.kind) for f in reference_hook.monitor.findings
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (tools/gpu_tests.sh)")
def test_on_cuda_no_other_synchronisation_than_the_one_transfer():
    model = _model(torch.device("cuda"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = GradGuardHook(model, optimizer=optimizer, max_norm=0.5)
    _backward(model, torch.device("cuda"))
    real_to_host = device.to_host

    def allowed(tensor):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_to_host(tensor)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    device.to_host = allowed
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimizer.step()
        clip_grad_norm_(model.parameters(), 1.0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
        device.to_host = real_to_host
    assert hook.steps == 1


def test_monitor_module_and_the_guard_on_the_device(on):
    model = _model(on)
    names = [name for name, _ in model.named_parameters()]
    monitor = gg.GradientMonitor(names=names)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(optimizer, clip=0.5, monitor=gg.GradientMonitor(names=names), names=names, snapshot_every=1)
    reference = _model(torch.device("cpu"))
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference_guard = Guard(reference_optimizer, clip=0.5, names=names, snapshot_every=1)
    for _ in range(4):
        optimizer.zero_grad()
        _backward(model, on)
        monitor_module(monitor, model)
        before = device.transfer_count()
        report = guard.step()
        assert device.transfer_count() - before == 1
        reference_optimizer.zero_grad()
        _backward(reference, torch.device("cpu"))
        with device_path(False):
            expected = reference_guard.step()
        assert report.grad_norm == pytest.approx(expected.grad_norm, rel=2e-6)
        assert report.clip_coef == pytest.approx(expected.clip_coef, rel=2e-6)
    for mine, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(mine.detach().cpu(), theirs.detach(), rtol=1e-5, atol=1e-6)
    assert monitor.summary()["steps"] == 4 and guard.monitor.summary()["steps"] == 4
    optimizer.zero_grad()
    _backward(model, on)
    kept = [p.detach().clone() for p in model.parameters()]
    assert guard.step(loss=float("nan")) is None  # restored from the snapshot taken on the device
    assert guard.actions[-1].action == "restored snapshot"
    assert all(torch.equal(p.detach(), k) for p, k in zip(model.parameters(), kept))


def test_meta_tensors_clip_as_torch_does_and_statistics_say_why_not():
    model = torch.nn.Linear(4, 4, device="meta")
    model.weight.grad, model.bias.grad = torch.ones(4, 4, device="meta"), torch.ones(4, device="meta")
    total = clip_grad_norm_(model.parameters(), 1.0)
    assert total.device.type == "meta"
    with pytest.raises(ValueError, match="meta device hold no values"):
        monitor_module(gg.GradientMonitor(), model)
    with pytest.raises(ValueError, match="NumPy cannot view a tensor on meta"):
        gg.torch.as_numpy(model.weight.grad)


class _ViaStats:
    """A monitor fed from statistics taken by the core, or on the device path."""

    def __init__(self, names, on_device):
        self.monitor, self.on_device = gg.GradientMonitor(names=names), on_device

    def update(self, grads, params=None, step=None, step_report=None, loss=None, allow_missing=False):
        if self.on_device:
            stats = device.device_grad_stats([torch.from_numpy(a) for a in grads.values()], list(grads), full=False)
        else:
            stats = gg.grad_stats(grads)
        return self.monitor.update_stats(stats, step=step, loss=loss, allow_missing=allow_missing)

    def __getattr__(self, name):  # the rest of the monitor (GradGuardHook feeds the scaled run through it)
        return getattr(self.monitor, name)


@pytest.mark.slow
@pytest.mark.parametrize("spec", detection.corpus(), ids=lambda spec: spec.name)
def test_the_detection_benchmark_finds_the_same_through_the_device_path(spec):
    findings = []
    for on_device in (False, True):
        record = detection.run(spec, make_monitor=lambda names, d=on_device: _ViaStats(names, d))
        findings.append([(f.step, f.layer, f.kind) for f in record.findings])
    assert findings[0] == findings[1]


TORCH_SUITES = ["test_torch_dropins.py", "test_torch_hook.py", "test_guard.py", "test_lightning.py", "test_keras.py"]


@pytest.mark.slow
def test_the_torch_suites_pass_through_the_device_path():
    """Every torch test again, with CPU tensors forced through the device path (GRADGUARD_TORCH_DEVICE_PATH=1)."""
    import os
    import subprocess
    import sys

    here = os.path.dirname(__file__)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *[os.path.join(here, f) for f in TORCH_SUITES],
        ],
        env=dict(os.environ, GRADGUARD_TORCH_DEVICE_PATH="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_a_monitor_that_reads_zero_fractions_gets_them_counted(on):
    model = _model(on)
    names = [name for name, _ in model.named_parameters()]
    reference_model = _model(torch.device("cpu"))
    monitors = []
    for target, forced, where in ((model, True, on), (reference_model, False, torch.device("cpu"))):
        monitor = gg.GradientMonitor(names=names, dead_fraction=0.5)
        with device_path(forced):
            for _ in range(3):
                target.zero_grad()
                _backward(target, where)
                target[0].weight.grad[:, :4] = 0.0  # half of a layer's gradient exactly zero
                monitor_module(monitor, target)
        monitors.append(monitor)
    ours, expected = monitors[0].history(), monitors[1].history()
    np.testing.assert_array_equal(ours["zero_fraction"], expected["zero_fraction"])
    assert ours["zero_fraction"][0, 0] == 0.5


def test_backward_norm_keeps_device_norms_on_the_device(on):
    from gradguard.torch import BackwardNorm

    model = _model(on)
    tracker = BackwardNorm(model, stats=True)
    _backward(model, on)
    grads = {name: p.grad.detach().cpu().numpy() for name, p in model.named_parameters()}
    before = device.transfer_count()
    assert tracker.total_norm() == pytest.approx(gg.global_norm(grads), rel=2e-6)
    assert device.transfer_count() - before == 1
    _assert_stats_close(tracker.grad_stats(), gg.grad_stats(grads))
    optimizer = gg.optim.SGD({name: np.zeros(a.shape, np.float32) for name, a in grads.items()}, lr=0.1)
    with pytest.raises(TypeError, match="gg.optim steps arrays in CPU memory"):
        tracker.step(optimizer)
    tracker.remove()
