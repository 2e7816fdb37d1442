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
