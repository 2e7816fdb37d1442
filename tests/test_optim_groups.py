"""gg.optim parameter groups, the lr attribute, LambdaLR and None gradients,
against torch.optim where it is installed."""

import math

import numpy as np
import pytest

import gradguard as gg

torch = pytest.importorskip("torch")

KINDS = {
    "sgd": (gg.optim.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    "adam": (gg.optim.Adam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.01}),
    "adamw": (gg.optim.AdamW, torch.optim.AdamW, {"lr": 0.01}),
    "rmsprop": (gg.optim.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.5, "centered": True}),
}


def _params(rng):
    return {
        "layer.weight": rng.standard_normal((4, 3)),
        "layer.bias": rng.standard_normal(4),
        "head.weight": rng.standard_normal((2, 4)),
        "head.bias": rng.standard_normal(2),
    }


def _groups(named, overrides):
    """Weights with weight decay, biases without (and with `overrides`): dicts of
    arrays for gradguard, lists of tensors for torch."""
    decay = {k: v for k, v in named.items() if k.endswith("weight")}
    no_decay = {k: v for k, v in named.items() if k.endswith("bias")}
    if isinstance(next(iter(named.values())), torch.Tensor):
        decay, no_decay = list(decay.values()), list(no_decay.values())
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, **overrides}]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("max_grad_norm", [None, 0.5])
def test_groups_and_none_gradients_match_torch(kind, max_grad_norm):
    ours_class, torch_class, hyper = KINDS[kind]
    rng = np.random.default_rng(0)
    named = _params(rng)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in named.items()}
    overrides = {"lr": hyper["lr"] / 3}
    ours = ours_class(_groups(named, overrides), max_grad_norm=max_grad_norm, **hyper)
    theirs = torch_class(_groups(tensors, overrides), **hyper)
    assert [len(g["params"]) for g in ours.param_groups] == [2, 2]
    for step in range(8):
        grads = {k: rng.standard_normal(v.shape) for k, v in named.items()}
        if step in (2, 5):
            grads["head.bias"] = None  # a parameter without a gradient this step (torch: .grad is None)
        if step == 6:
            ours.param_groups[0]["lr"] = hyper["lr"] / 2  # a schedule's change takes effect at the next step
            theirs.param_groups[0]["lr"] = hyper["lr"] / 2
        for name, tensor in tensors.items():
            tensor.grad = None if grads[name] is None else torch.tensor(grads[name])
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([t for t in tensors.values() if t.grad is not None], max_grad_norm)
        theirs.step()
        ours.step(grads)
        for name, tensor in tensors.items():
            np.testing.assert_allclose(named[name], tensor.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_skipped_parameter_keeps_its_state_and_reports_nan():
    named = {"w": np.ones((2, 2)), "b": np.ones(2)}
    optimizer = gg.optim.Adam(named, lr=0.1)
    optimizer.step({"w": np.ones((2, 2)), "b": np.ones(2)})
    state_b = optimizer.state["exp_avg"][1].copy()
    report = optimizer.step({"w": np.ones((2, 2)), "b": None}, return_report=True)
    np.testing.assert_array_equal(optimizer.state["exp_avg"][1], state_b)
    assert math.isnan(report.update_norms[1]) and report.update_norms[0] > 0
    assert optimizer.state_dict()["param_steps"] == [2, 1]
    before = {k: v.copy() for k, v in named.items()}
    optimizer.step({"w": None, "b": None})  # nothing to do
    for k in named:
        np.testing.assert_array_equal(named[k], before[k])


def test_lr_attribute_and_per_group_edits():
    named = _params(np.random.default_rng(1))
    optimizer = gg.optim.SGD(_groups(named, {"lr": 0.5}), lr=0.1)
    assert optimizer.lr == 0.1 and optimizer.param_groups[1]["lr"] == 0.5
    optimizer.lr = 0.2
    assert [g["lr"] for g in optimizer.param_groups] == [0.2, 0.2]
    assert optimizer.hyper["lr"] == 0.2  # the first group's, live
    optimizer.hyper["lr"] = 0.3
    assert optimizer.param_groups[0]["lr"] == 0.3
    with pytest.raises(ValueError, match="lr"):
        optimizer.lr = -1.0


def test_an_invalid_group_edit_refuses_the_step_and_changes_nothing():
    named = _params(np.random.default_rng(2))
    optimizer = gg.optim.Adam(_groups(named, {}), lr=0.1)
    optimizer.param_groups[1]["lr"] = math.nan
    before = {k: v.copy() for k, v in named.items()}
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        optimizer.step({k: np.ones_like(v) for k, v in named.items()})
    for k in named:
        np.testing.assert_array_equal(named[k], before[k])
    assert optimizer.step_count == 0


def test_group_construction_is_checked():
    a, b = np.ones(2), np.ones(3)
    with pytest.raises(ValueError, match="does not take"):
        gg.optim.SGD([{"params": [a], "betas": (0.9, 0.99)}], lr=0.1)
    with pytest.raises(ValueError, match="no 'params'"):
        gg.optim.SGD([{"lr": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="all be named"):
        gg.optim.SGD([{"params": {"a": a}}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match="unique"):
        gg.optim.SGD([{"params": {"a": a}}, {"params": {"a": b}}], lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        gg.optim.SGD([{"params": [a], "momentum": -1.0}], lr=0.1)


def test_state_dict_round_trip_with_groups():
    rng = np.random.default_rng(3)
    named = _params(rng)
    optimizer = gg.optim.AdamW(_groups(named, {"lr": 0.003}), lr=0.01)
    grads = {k: rng.standard_normal(v.shape) for k, v in named.items()}
    optimizer.step(grads)
    saved = optimizer.state_dict()
    assert len(saved["param_groups"]) == 2 and saved["hyper"] == saved["param_groups"][0]
    twin_params = {k: v.copy() for k, v in named.items()}
    twin = gg.optim.AdamW(_groups(twin_params, {"lr": 0.5}), lr=0.5)
    twin.load_state_dict(saved)
    assert twin.param_groups[1]["lr"] == 0.003
    optimizer.step(grads)
    twin.step(grads)
    for k in named:
        np.testing.assert_array_equal(named[k], twin_params[k])
    one_group = gg.optim.AdamW({k: v.copy() for k, v in named.items()}, lr=0.01)
    with pytest.raises(ValueError, match="parameter groups"):
        one_group.load_state_dict(saved)


def test_lambda_lr_matches_torch():
    named = _params(np.random.default_rng(4))
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in named.items()}
    ours = gg.optim.SGD(_groups(named, {"lr": 0.05}), lr=0.1)
    theirs = torch.optim.SGD(_groups(tensors, {"lr": 0.05}), lr=0.1)
    warmup = lambda epoch: min(1.0, (epoch + 1) / 4)  # noqa: E731
    ours_schedule = gg.optim.LambdaLR(ours, warmup)
    theirs_schedule = torch.optim.lr_scheduler.LambdaLR(theirs, warmup)
    for _ in range(6):
        assert ours_schedule.get_last_lr() == pytest.approx(theirs_schedule.get_last_lr())
        theirs.step()
        ours_schedule.step()
        theirs_schedule.step()
    with pytest.raises(ValueError, match="one per group"):
        gg.optim.LambdaLR(ours, [warmup])


def test_guard_backoff_scales_every_group():
    named = _params(np.random.default_rng(5))
    optimizer = gg.optim.SGD(_groups(named, {"lr": 0.05}), lr=0.1)
    guard = gg.Guard(optimizer, backoff_after=1)
    guard._scale_lr(0.5)
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.025]
    guard.set_lr(0.2)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1, 0.05])
    assert guard.base_lr == 0.2


def test_editing_which_parameters_a_group_holds_is_refused_at_the_step():
    first, second, other = np.ones(3, np.float32), np.ones(3, np.float32), np.ones(3, np.float32)
    for edit in (
        lambda groups: groups.pop(),
        lambda groups: groups.append({"params": [other], "lr": 1.0}),
        lambda groups: groups[1].__setitem__("params", [other]),
        lambda groups: groups[1]["params"].__setitem__(0, other),
        lambda groups: groups[0]["params"].append(other),
    ):
        optimizer = gg.optim.SGD([{"params": [first]}, {"params": [second], "lr": 1.0}], lr=0.1)
        edit(optimizer.param_groups)
        with pytest.raises(ValueError, match="param_groups.*(groups|changed)"):
            optimizer.step([np.ones(3, np.float32)] * 2)
        assert (first == 1).all() and (second == 1).all() and (other == 1).all() and optimizer.step_count == 0


@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_momentum_switched_on_mid_run_starts_its_buffer_as_torch_does(dampening):
    ours, theirs = np.ones(3, np.float32), torch.ones(3, requires_grad=True)
    other = np.ones(2, np.float32)  # a second group whose momentum stays off
    optimizer = gg.optim.SGD([{"params": [ours]}, {"params": [other]}], lr=0.1)
    reference = torch.optim.SGD([theirs], lr=0.1)
    for step in range(5):
        if step == 2:
            optimizer.param_groups[0].update(momentum=0.9, dampening=dampening)
            reference.param_groups[0].update(momentum=0.9, dampening=dampening)
        gradient = np.full(3, step + 1.0, np.float32)
        optimizer.step([gradient, np.ones(2, np.float32)])
        theirs.grad = torch.tensor(gradient)
        reference.step()
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-6)


def test_lambda_lr_sets_all_rates_or_none():
    first, second = np.ones(3, np.float32), np.ones(3, np.float32)
    optimizer = gg.optim.SGD([{"params": [first]}, {"params": [second], "lr": 0.5}], lr=0.1)

    def fails_at_two(epoch):
        if epoch == 2:
            raise RuntimeError("boom")
        return 1.0

    schedule = gg.optim.LambdaLR(optimizer, [lambda epoch: 0.5**epoch, fails_at_two])
    schedule.step()
    with pytest.raises(RuntimeError, match="boom"):
        schedule.step()
    assert schedule.get_last_lr() == [0.05, 0.5] and schedule.last_epoch == 1
    schedule.lr_lambdas[1] = lambda epoch: math.nan
    with pytest.raises(ValueError, match=r"lr_lambda\[1\]\(2\) must not be NaN"):
        schedule.step()
    schedule.lr_lambdas[1] = lambda epoch: -1.0
    with pytest.raises(ValueError, match="lr must be finite, >= 0"):
        schedule.step()
    assert schedule.get_last_lr() == [0.05, 0.5] and schedule.last_epoch == 1


def test_lambda_lr_resumes_from_its_state_dict_like_torch():
    def factor(epoch):
        return 0.9**epoch

    ours = gg.optim.SGD([np.ones(3, np.float32)], lr=0.1)
    schedule = gg.optim.LambdaLR(ours, factor)
    for _ in range(4):
        schedule.step()
    saved = schedule.state_dict()
    resumed_optimizer = gg.optim.SGD([np.ones(3, np.float32)], lr=0.1)
    resumed = gg.optim.LambdaLR(resumed_optimizer, factor)
    resumed.load_state_dict(saved)
    assert resumed.get_last_lr() == schedule.get_last_lr() and resumed.last_epoch == 4
    schedule.step()
    resumed.step()
    assert resumed.get_last_lr() == schedule.get_last_lr()
    weight = torch.nn.Parameter(torch.ones(3))
    torch_optimizer = torch.optim.SGD([weight], lr=0.1)
    reference = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, factor)
    for _ in range(5):
        torch_optimizer.step()
        reference.step()
    assert resumed.get_last_lr() == pytest.approx(reference.get_last_lr(), rel=1e-12)
    for bad, error in (
        ({"base_lrs": [0.1, 0.1], "last_epoch": 1}, ValueError),
        ({"base_lrs": [-0.1], "last_epoch": 1}, ValueError),
        ({"base_lrs": [0.1], "last_epoch": -2}, ValueError),
        ({"base_lrs": [0.1]}, ValueError),
        ("x", TypeError),
    ):
        with pytest.raises(error):
            resumed.load_state_dict(bad)
    assert resumed.last_epoch == 5
