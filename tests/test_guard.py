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


@pytest.mark.parametrize("refusal", ["shape", "float64", "missing", "loss", "monitor names"])
@pytest.mark.parametrize("clip", [None, "zclip", "autoclip"])
def test_a_refused_step_changes_nothing(refusal, clip):
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer, clip=clip)
    for _ in range(6):
        guard.step(grads(1.0))
    if refusal == "monitor names":
        guard.monitor = gg.GradientMonitor(names=["x", "y"])
    bad, loss = grads(1e6), None  # a spike: a refused one must not back the lr off either
    if refusal == "shape":
        bad["w"] = np.ones((2, 8), np.float32)
    elif refusal == "float64":
        bad["b"] = bad["b"].astype(np.float64)
    elif refusal == "missing":
        del bad["b"]
    elif refusal == "loss":
        loss = "x"
    before = (guard.state_dict(), optimizer.state_dict(), {k: v.copy() for k, v in params.items()})
    threshold = optimizer.max_grad_norm
    with pytest.raises((TypeError, ValueError)):
        guard.step(bad, loss=loss)
    after = (guard.state_dict(), optimizer.state_dict(), params)
    assert repr(after[0]) == repr(before[0]) and repr(after[1]) == repr(before[1])
    assert all(np.array_equal(after[2][k], before[2][k]) for k in params)
    assert optimizer.max_grad_norm == threshold and guard.step_count == 6


def test_a_nan_loss_is_news_not_a_mistake():
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer, snapshot_every=1)
    guard.step(grads(), loss=1.0)
    assert guard.step(grads(), loss=float("nan")) is None
    assert guard.actions[-1].action == "restored snapshot"


def _run(steps, resume_at=None):
    """A guarded run with spikes, a NaN step and a monitor; with resume_at, stopped
    there and resumed from its state dicts into new objects."""
    rng = np.random.default_rng(5)
    sequence = []
    for step in range(steps):
        scale = 1e4 if step in (20, 21, 35) else 1.0
        gradient = {
            "w": (rng.standard_normal((4, 4)) * scale).astype(np.float32),
            "b": rng.standard_normal(4).astype(np.float32),
        }
        if step == 40:
            gradient["b"][0] = np.nan
        sequence.append(gradient)

    def build(saved=None):
        params = {"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)}
        optimizer = gg.optim.Adam(params, lr=0.01)
        monitor = gg.GradientMonitor(names=["w", "b"])
        guard = gg.Guard(optimizer, clip="zclip", monitor=monitor, snapshot_every=4, backoff_after=2)
        if saved is not None:
            for name in params:
                params[name][...] = saved["params"][name]
            optimizer.load_state_dict(saved["optimizer"])
            monitor.load_state_dict(saved["monitor"])
            guard.load_state_dict(saved["guard"])
        return params, optimizer, monitor, guard

    params, optimizer, monitor, guard = build()
    for step, gradient in enumerate(sequence):
        if step == resume_at:
            saved = {
                "params": {k: v.copy() for k, v in params.items()},
                "optimizer": optimizer.state_dict(),
                "monitor": monitor.state_dict(),
                "guard": guard.state_dict(),
            }
            params, optimizer, monitor, guard = build(saved)
        guard.step({k: v.copy() for k, v in gradient.items()})
    return guard.actions, params, [(f.step, f.layer, f.kind) for f in monitor.findings], guard.summary()


@pytest.mark.parametrize("resume_at", [3, 22, 38])
def test_a_run_resumed_from_its_state_dicts_acts_as_the_uninterrupted_one(resume_at):
    actions, params, findings, summary = _run(60)
    resumed = _run(60, resume_at)
    assert any(action.action == "lr backoff" for action in actions) and findings  # the run has something to say
    assert resumed[0] == actions and resumed[2] == findings and resumed[3] == summary
    for name in params:
        np.testing.assert_array_equal(resumed[1][name], params[name])


@pytest.mark.parametrize(
    "change, error",
    [
        ({"lr_scale": 2.0}, ValueError),
        ({"lr_scale": "x"}, TypeError),
        ({"step_count": -1}, ValueError),
        ({"base_lrs": [0.1, 0.2]}, ValueError),
        ({"norms": [1.0, float("nan")]}, ValueError),
        ({"explosions": [5, 2]}, ValueError),
        ({"clip": {"mean": "x"}}, ValueError),
        ({"actions": [{"step": 0}]}, ValueError),
        ({"snapshot": {"params": [np.ones(3, np.float32)], "optimizer": {}}}, ValueError),
        ({"bogus": 1}, ValueError),
    ],
)
def test_guard_load_state_dict_refuses_a_bad_state_and_changes_nothing(change, error):
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer, clip="zclip")
    for _ in range(3):
        guard.step(grads())
    before = repr(guard.state_dict())
    with pytest.raises(error):
        guard.load_state_dict({**guard.state_dict(), **change})
    assert repr(guard.state_dict()) == before
    with pytest.raises(TypeError, match="takes the dict"):
        guard.load_state_dict([1])


def test_a_snapshot_of_parameters_that_changed_shape_is_refused_before_anything_is_written():
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer, snapshot_every=1, restore_after=1)
    guard.step(grads())
    params["w"].shape = (2, 8)  # the same memory seen in another shape: the snapshot no longer fits
    kept = optimizer.state_dict()
    with pytest.raises(RuntimeError, match="cannot restore its snapshot"):
        guard.step({"w": np.ones((2, 8), np.float32), "b": grads()["b"]}, loss=float("inf"))
    assert repr(optimizer.state_dict()) == repr(kept)


def test_torch_guard_with_a_monitor_and_a_parameter_without_a_gradient():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    for names in (["0.weight", "0.bias", "1.weight", "1.bias"], None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = gg.GradientMonitor(names=names or ["0", "1", "2", "3"])
        guard = TorchGuard(optimizer, clip=1.0, monitor=monitor, names=names)
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(5, 3)).sum().backward()
            model[1].bias.grad = None  # e.g. a frozen or unused parameter this step
            guard.step()
        assert guard.step_count == 3 and not monitor.findings
        assert np.isnan(monitor.history()["norm"][:, 3]).all() and np.isfinite(monitor.history()["norm"][:, 0]).all()


def test_torch_guard_clips_a_strided_gradient_before_the_optimizer_reads_it():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    weight = torch.nn.Parameter(torch.zeros(6, 4))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    guard = TorchGuard(optimizer, clip=1.0)
    full = torch.full((6, 8), 5.0)
    weight.grad = full[:, ::2]  # every other column: not one dense block, clipped in a copy
    assert weight.grad.stride() == (8, 2)
    guard.step()
    # clip-then-step moves the weight by the clipped gradient: norm 1
    assert float(weight.detach().norm()) == pytest.approx(1.0, rel=1e-5)


def test_torch_guard_refuses_to_restore_a_parameter_whose_tensor_was_replaced():
    torch = pytest.importorskip("torch")
    from gradguard.torch import Guard as TorchGuard

    weight = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    guard = TorchGuard(optimizer, snapshot_every=1, restore_after=1)
    weight.grad = torch.ones(4)
    guard.step()
    weight.data = torch.zeros(8)  # the parameter's tensor replaced by one of another shape
    weight.grad = torch.ones(8)
    with pytest.raises(RuntimeError, match="cannot restore its snapshot"):
        guard.step(loss=float("nan"))
    assert torch.equal(weight.detach(), torch.zeros(8))


def test_a_refused_step_names_the_gradient_as_the_caller_gave_it():
    params, optimizer = params_and_optimizer()
    guard = gg.Guard(optimizer)
    with pytest.raises(ValueError, match=r"grads\[0\] \('w'\) has shape \(2, 8\)"):
        guard.step({"w": np.ones((2, 8), np.float32), "b": np.ones(4, np.float32)})
    listed = gg.Guard(gg.optim.SGD([np.ones(3, np.float32)], lr=0.1))
    with pytest.raises(TypeError, match=r"params\[0\] is float32 with a float64 gradient"):
        listed.step([np.ones(3, np.float64)])
    with pytest.raises(TypeError, match="loss must be a real number"):
        listed.step([np.ones(3, np.float32)], loss="x")
