"""gg.Guard: skipping, clipping, learning-rate backoff and recovery, snapshot restore."""

import math

import numpy as np
import pytest

import gradguard as gg


def params_and_optimizer(lr=0.1, **kw):
    params = {"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)}
    return params, gg.optim.SGD(params, lr=lr, **kw)


def grads(value=1.0):
    return {"w": np.full((4, 4), value, np.float32), "b": np.full(4, value, np.float32)}


def test_nonfinite_step_is_skipped_and_recorded():
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer)
    bad = grads()
    bad["w"][0, 0] = np.nan
    assert guard.step(bad) is None
    assert (params["w"] == 1).all() and (params["b"] == 0).all() and optimizer.step_count == 0
    assert [(a.step, a.cause, a.action) for a in guard.actions] == [(0, "nonfinite", "skipped step")]


def test_fixed_clip_gives_the_fused_step_bit_for_bit():
    params, optimizer = params_and_optimizer()
    twin_params, twin = params_and_optimizer(max_grad_norm=0.5)
    guard = gg.Guard(optimizer, clip=0.5)
    for value in (1.0, 3.0, 0.01):
        report = guard.step(grads(value))
        expected = twin.step(grads(value), return_report=True)
        assert report.grad_norm == expected.grad_norm and report.clip_coef == expected.clip_coef
    for name in params:
        np.testing.assert_array_equal(params[name], twin_params[name])


def test_adaptive_clipper_thresholds_follow_zclip():
    params, optimizer = params_and_optimizer()
    zclip, reference = gg.ZClip(warmup_steps=3, max_grad_norm=None), gg.ZClip(warmup_steps=3, max_grad_norm=None)
    guard = gg.Guard(optimizer, clip=zclip)
    for value in [1.0, 1.1, 0.9, 1.0, 50.0]:
        g = grads(value)
        norm = gg.global_norm(g)
        threshold = reference.observe(norm)
        report = guard.step(g)
        expected = 1.0 if not math.isfinite(threshold) else min(1.0, threshold / (norm + 1e-6))
        assert report.clip_coef == pytest.approx(expected, rel=1e-12)
    assert report.clip_coef < 0.2  # the spike at 50 was clipped


def test_learning_rate_backs_off_after_explosions_and_recovers():
    params, optimizer = params_and_optimizer(lr=0.1)
    guard = gg.Guard(optimizer, backoff_after=2, lr_backoff=0.5, recovery_steps=10)
    for _ in range(6):
        guard.step(grads(1.0))
    guard.step(grads(1000.0))  # spike: norm > 10 x median
    assert optimizer.hyper["lr"] == 0.1
    guard.step(grads(1000.0))
    assert optimizer.hyper["lr"] == pytest.approx(0.05)
    assert [a.action for a in guard.actions] == ["lr backoff"]
    for _ in range(10):
        guard.step(grads(1.0))
    assert optimizer.hyper["lr"] == pytest.approx(0.1)
    assert guard.actions[-1].action == "lr restored"


def test_snapshot_is_restored_after_repeated_explosions():
    params, optimizer = params_and_optimizer(lr=0.01)
    monitor = gg.GradientMonitor()
    guard = gg.Guard(optimizer, monitor=monitor, snapshot_every=2, restore_after=3, backoff_after=100)
    for _ in range(4):
        guard.step(grads(1.0))
    saved = {name: value.copy() for name, value in params.items()}
    bad = grads()
    bad["b"][0] = np.inf
    for _ in range(3):
        guard.step(bad)
    for name in params:
        np.testing.assert_array_equal(params[name], saved[name])
    actions = [a.action for a in guard.actions]
    assert actions[-1] == "restored snapshot" and actions.count("skipped step") == 2
    assert "restored snapshot" in monitor.report()


def test_a_nonfinite_loss_restores_too():
    params, optimizer = params_and_optimizer(lr=0.01)
    guard = gg.Guard(optimizer, snapshot_every=1)
    guard.step(grads(1.0))
    guard.step(grads(1.0))
    saved = params["w"].copy()  # the snapshot of the last good step
    assert guard.step(grads(1.0), loss=float("nan")) is None
    np.testing.assert_array_equal(params["w"], saved)


@pytest.mark.parametrize("bad", [dict(clip=-1.0), dict(lr_backoff=1.0), dict(window=0), dict(clip="nope")])
def test_settings_are_validated(bad):
    _, optimizer = params_and_optimizer()
    with pytest.raises((ValueError, TypeError)):
        gg.Guard(optimizer, **bad)


def test_torch_guard_clips_like_torch_and_skips_nonfinite_steps():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    def model_and_optimizer():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    ours, our_optimizer = model_and_optimizer()
    theirs, their_optimizer = model_and_optimizer()
    monitor = gg.GradientMonitor()
    guard = TorchGuard(our_optimizer, clip=0.5, monitor=monitor, names=[n for n, _ in ours.named_parameters()])
    x, y = torch.randn(32, 6), torch.randn(32, 1)
    for _ in range(3):
        for model, optimizer in ((ours, our_optimizer), (theirs, their_optimizer)):
            optimizer.zero_grad()
            ((model(x) * 10 - y) ** 2).mean().backward()
        guard.step()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        their_optimizer.step()
    for mine, reference in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-6)
    assert monitor.names == [n for n, _ in ours.named_parameters()]
    before = [p.detach().clone() for p in ours.parameters()]
    our_optimizer.zero_grad()
    ((ours(x) - y) ** 2).mean().backward()
    next(ours.parameters()).grad[0, 0] = float("nan")
    assert guard.step() is None
    assert all(torch.equal(p, b) for p, b in zip(ours.parameters(), before))
    assert guard.actions[-1].action == "skipped step"


def test_torch_guard_backs_off_every_group():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    weight, bias = torch.nn.Parameter(torch.ones(4)), torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([{"params": [weight], "lr": 0.1}, {"params": [bias], "lr": 0.01}], lr=0.1)
    guard = TorchGuard(optimizer, backoff_after=1, lr_backoff=0.5)
    for scale in (1.0,) * 5 + (1e4,):
        weight.grad, bias.grad = torch.full((4,), scale), torch.full((4,), scale)
        guard.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.05, 0.005])


def test_nonfinite_norms_never_enter_the_clippers_history():
    params, optimizer = params_and_optimizer()
    zclip = gg.ZClip(warmup_steps=2)
    guard = gg.Guard(optimizer, clip=zclip, skip_nonfinite=False)
    bad = grads()
    bad["w"][0, 0] = np.inf
    guard.step(bad)
    guard.step(grads(1.0))
    guard.step(grads(1.0))
    assert zclip.mean is not None and math.isfinite(zclip.mean)


def test_a_generator_of_gradients_is_read_once():
    params, optimizer = params_and_optimizer(max_grad_norm=None)
    expected_params, expected = params_and_optimizer(max_grad_norm=None)
    guard, reference_guard = gg.Guard(optimizer, clip=0.5), gg.Guard(expected, clip=0.5)
    report = guard.step(g for g in grads(3.0).values())
    expected_report = reference_guard.step(list(grads(3.0).values()))
    assert report.grad_norm == expected_report.grad_norm and report.clip_coef == expected_report.clip_coef < 1
    for name in params:
        np.testing.assert_array_equal(params[name], expected_params[name])


def test_torch_guard_refuses_names_that_do_not_name_each_parameter_once():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"repeated: \['a'\]"):
        TorchGuard(optimizer, names=["a", "a"])
    with pytest.raises(ValueError, match="got 1 names"):
        TorchGuard(optimizer, names=["weight"])
    TorchGuard(optimizer, names=["weight", "bias"])
