"""gradguard.torch.BackwardNorm: the global norm (and statistics) taken in
torch's post-accumulate-grad hooks equal the calls on the finished gradients
bit for bit, and the clip folded into a gg.optim step equals a clip then step."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradguard as gg  # noqa: E402
from gradguard.torch import BackwardNorm  # noqa: E402

STATS_FIELDS = ("numel", "mean", "std", "abs_mean", "l2", "min", "max", "n_nan", "n_inf", "n_zero")


class _Net(torch.nn.Module):
    """Layers big enough for several pieces, a tied weight used twice, and a branch left unused."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(40, 400, dtype=dtype)
        self.hidden = torch.nn.Linear(400, 400, dtype=dtype)
        self.out = torch.nn.Linear(400, 3, dtype=dtype)
        self.unused = torch.nn.Linear(5, 5, dtype=dtype)

    def forward(self, x):
        h = torch.tanh(self.embed(x))
        h = torch.relu(self.hidden(h)) + torch.relu(self.hidden(h * 0.5))  # self.hidden used twice
        return self.out(h)


def _backward(model, seed=1, dtype=torch.float32, scale=1.0):
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    (model(x).pow(2).sum() * scale).backward()


def _grads(model):
    return {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}


def test_the_norm_from_backward_is_global_norm_of_the_gradients_bit_for_bit():
    model = _Net()
    with BackwardNorm(model, stats=True) as tracker:
        _backward(model)
        grads = _grads(model)
        assert tracker.present() == list(grads)  # the unused layer is left out, as .grad None
        assert tracker.total_norm() == gg.global_norm(list(grads.values()))
        stats, expected = tracker.grad_stats(), gg.grad_stats(grads)
        for field in STATS_FIELDS:
            np.testing.assert_array_equal(getattr(stats, field), getattr(expected, field), err_msg=field)
        assert stats.names == expected.names


def test_accumulated_gradients_count_as_of_the_last_backward():
    model = _Net()
    tracker = BackwardNorm(model)
    _backward(model, seed=1)
    _backward(model, seed=2)  # accumulates into .grad; the hooks run again
    assert tracker.total_norm() == gg.global_norm(list(_grads(model).values()))
    tracker.reset()
    assert tracker.total_norm() == 0.0 and tracker.present() == []
    tracker.remove()
    _backward(model, seed=3)
    assert tracker.present() == []  # detached


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_the_fused_step_equals_clip_then_step(kind):
    model, reference = _Net(), _Net()
    reference.load_state_dict(model.state_dict())
    make = {
        "AdamW": lambda params: gg.optim.AdamW(params, lr=1e-2, max_grad_norm=0.5),
        "SGD": lambda params: gg.optim.SGD(params, lr=1e-2, momentum=0.9, max_grad_norm=0.5),
    }[kind]
    tracker = BackwardNorm(model)
    ours = make({name: p.detach().numpy() for name, p in model.named_parameters()})
    theirs = make({name: p.detach().numpy() for name, p in reference.named_parameters()})
    for seed in range(3):
        for net in (model, reference):
            net.zero_grad(set_to_none=True)
            _backward(net, seed)
        report = tracker.step(ours, return_report=True)
        expected = theirs.step(
            {name: (p.grad.numpy() if p.grad is not None else None) for name, p in reference.named_parameters()},
            return_report=True,
        )
        assert report.grad_norm == expected.grad_norm and report.clip_coef == expected.clip_coef < 1
    for (name, ours_p), (_, theirs_p) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(ours_p, theirs_p), name
    tracker.remove()


def test_a_monitor_is_fed_from_the_same_read():
    model = _Net()
    with pytest.raises(ValueError, match="monitor must know its layers"):
        BackwardNorm(model, monitor=gg.GradientMonitor())
    monitor = gg.GradientMonitor(names=[name for name, _ in model.named_parameters()])
    tracker = BackwardNorm(model, monitor=monitor)
    reference = gg.GradientMonitor(names=[name for name, _ in model.named_parameters()])
    optimizer = gg.optim.SGD({name: p.detach().numpy() for name, p in model.named_parameters()}, lr=1e-3)
    for seed in range(3):
        model.zero_grad(set_to_none=True)
        _backward(model, seed)
        reference.update(_grads(model), allow_missing=True)
        tracker.step(optimizer)
    ours, expected = monitor.history(), reference.history()
    for key in ("norm", "abs_mean", "std", "zero_fraction"):
        np.testing.assert_array_equal(ours[key], expected[key], err_msg=key)
    tracker.remove()


def test_float64_gradients_beyond_the_fast_path():
    model = _Net(torch.float64)
    with BackwardNorm(model, stats=True) as tracker:
        _backward(model, dtype=torch.float64, scale=1e200)  # squares beyond float64
        grads = _grads(model)
        expected = gg.global_norm(list(grads.values()))
        assert math.isfinite(expected) and expected > 1e154
        assert tracker.total_norm() == expected
        np.testing.assert_array_equal(tracker.grad_stats().std, gg.grad_stats(grads).std)


def test_misuse():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    with BackwardNorm(embedding), pytest.raises(TypeError, match="dense"):
        embedding(torch.tensor([1, 2])).sum().backward()
    model = _Net()
    tracker = BackwardNorm(model)
    with pytest.raises(RuntimeError, match="stats=True"):
        tracker.grad_stats()
    with pytest.raises(TypeError, match="named_parameters"):
        BackwardNorm([torch.zeros(3, requires_grad=True)])
    tracker.remove()


def test_over_a_group_a_non_finite_step_is_skipped_and_a_finite_one_matches():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from distributed_worker import OneRank

    model, reference = _Net(), _Net()
    tracker = BackwardNorm(model, stats=True)
    optimizer = gg.optim.AdamW({n: p.detach().numpy() for n, p in model.named_parameters()}, max_grad_norm=0.5)
    theirs = gg.optim.AdamW({n: p.detach().numpy() for n, p in reference.named_parameters()}, max_grad_norm=0.5)
    for net in (model, reference):
        _backward(net)
    assert tracker.total_norm(group=OneRank()) == tracker.total_norm()
    stats = tracker.grad_stats(group=OneRank())
    np.testing.assert_array_equal(stats.l2, tracker.grad_stats().l2)
    report = tracker.step(optimizer, group=OneRank(), return_report=True)
    expected = theirs.step(
        {n: (p.grad.numpy() if p.grad is not None else None) for n, p in reference.named_parameters()},
        return_report=True,
    )
    assert report.grad_norm == expected.grad_norm and not report.skipped
    model.zero_grad(set_to_none=True)
    _backward(model, scale=float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    assert tracker.step(optimizer, group=OneRank(), return_report=True).skipped
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    tracker.remove()


def test_a_step_the_optimizer_refuses_changes_nothing_and_keeps_the_partials():
    model = _Net()
    names = [name for name, _ in model.named_parameters()]
    monitor = gg.GradientMonitor(names=names)
    tracker = BackwardNorm(model, monitor=monitor)
    wrong = {name: np.ones(tuple(reversed(p.shape)) or (1,), np.float32) for name, p in model.named_parameters()}
    optimizer = gg.optim.SGD(wrong, lr=0.1)  # parameters of other shapes: every step is refused
    _backward(model)
    total = tracker.total_norm()
    before = {name: array.copy() for name, array in wrong.items()}
    with pytest.raises(ValueError, match="shape"):
        tracker.step(optimizer)
    assert monitor.summary()["steps"] == 0  # the monitor was not fed a step that did not happen
    assert tracker.total_norm() == total  # the partials are kept for a step that can follow
    assert all(np.array_equal(wrong[name], before[name]) for name in wrong)
    right = gg.optim.SGD({name: p.detach().numpy() for name, p in model.named_parameters()}, lr=0.1)
    tracker.step(right)
    assert monitor.summary()["steps"] == 1 and tracker.total_norm() == 0.0


def test_a_monitor_of_other_layers_is_refused_at_construction():
    model = _Net()
    with pytest.raises(ValueError, match="monitor must know its layers"):
        BackwardNorm(model, monitor=gg.GradientMonitor(names=["a", "b"]))
