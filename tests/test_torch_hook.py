"""gradguard.torch.GradGuardHook: the monitor fed by name at every optimiser step,
missing gradients tolerated, clipping as torch's, and torch.amp.GradScaler."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gradguard as gg  # noqa: E402
from gradguard.torch import GradGuardHook, monitor_module  # noqa: E402


class TwoBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.used = torch.nn.Linear(4, 2)
        self.unused = torch.nn.Linear(4, 2)
        self.frozen = torch.nn.Linear(2, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x, branch="used"):
        h = self.conv(x).mean(dim=(2, 3))
        return self.frozen(getattr(self, branch)(h))


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 3, 6, 6, generator=generator).to(memory_format=torch.channels_last)
    return x, torch.randn(8, 2, generator=generator)


def test_hook_feeds_the_monitor_by_name_and_tolerates_missing_gradients():
    torch.manual_seed(0)
    model = TwoBranches().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = GradGuardHook(model, optimizer=optimizer)
    assert "frozen.weight" not in hook.names and "unused.weight" in hook.names
    for step in range(6):
        optimizer.zero_grad(set_to_none=True)
        x, y = _batch(step)
        branch = "unused" if step == 4 else "used"
        torch.nn.functional.mse_loss(model(x, branch), y).backward()
        optimizer.step()
    assert hook.steps == 6
    history = hook.monitor.history()
    column = {name: i for i, name in enumerate(history["layers"])}
    assert np.isnan(history["norm"][0, column["unused.weight"]])
    assert np.isfinite(history["norm"][4, column["unused.weight"]])
    assert np.isnan(history["norm"][4, column["used.weight"]])
    assert hook.monitor.findings == []  # absence is not a finding
    # The recorded norms are those torch computes.
    x, y = _batch(9)
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.mse_loss(model(x), y).backward()
    expected = model.conv.weight.grad.norm().item()
    optimizer.step()
    assert hook.monitor.history()["norm"][-1, column["conv.weight"]] == pytest.approx(expected, rel=1e-6)
    hook.remove()
    optimizer.step()
    assert hook.steps == 7


def test_hook_clips_as_clip_grad_norm_does_channels_last_included():
    torch.manual_seed(1)
    model = TwoBranches().to(memory_format=torch.channels_last)
    twin = TwoBranches().to(memory_format=torch.channels_last)
    twin.load_state_dict(model.state_dict())
    x, y = _batch(3)
    for net in (model, twin):
        (1e3 * torch.nn.functional.mse_loss(net(x), y)).backward()
    hook = GradGuardHook(model, max_norm=0.5)
    hook()
    expected = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.5)
    assert hook.last_norm == pytest.approx(expected.item(), rel=1e-5)
    assert model.conv.weight.grad.is_contiguous(memory_format=torch.channels_last)
    for mine, theirs in zip(model.parameters(), twin.parameters()):
        if mine.grad is not None:
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-7)


def test_hook_with_grad_scaler_sees_unscaled_gradients_and_skipped_steps_stay_skipped():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    hook = GradGuardHook(model, optimizer=optimizer, max_norm=1.0)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    loss = torch.nn.functional.mse_loss(model(x), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    torch.nn.functional.mse_loss(reference(x), y).backward()
    unscaled = math.sqrt(sum(p.grad.pow(2).sum().item() for p in reference.parameters()))
    assert hook.steps == 1 and hook.last_norm == pytest.approx(unscaled, rel=1e-5)
    # An overflowing step: the scaler skips it, the hook never runs, nothing moves.
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    scaler.scale(loss * float("inf")).backward()
    scaler.step(optimizer)
    scaler.update()
    assert hook.steps == 1 and scaler.get_scale() < 2.0**10
    for old, new in zip(before, model.parameters()):
        torch.testing.assert_close(old, new.detach())
    assert hook.monitor.findings == []


def test_manual_hook_with_scaler_ignores_an_overflowed_step():
    model = torch.nn.Linear(3, 1)
    hook = GradGuardHook(model.named_parameters(), max_norm=1.0, scaler=object())
    model.weight.grad = torch.full_like(model.weight, float("inf"))
    model.bias.grad = torch.ones_like(model.bias)
    assert hook() == [] and hook.steps == 0 and math.isinf(hook.last_norm)
    assert torch.isinf(model.weight.grad).all()  # left for the scaler to skip, not clipped into zeros


def test_hook_refuses_what_it_cannot_serve():
    with pytest.raises(TypeError, match="named_parameters"):
        GradGuardHook([torch.zeros(2, requires_grad=True)])
    with pytest.raises(ValueError, match="requires a gradient"):
        GradGuardHook(torch.nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(ValueError, match="names"):
        GradGuardHook(torch.nn.Linear(2, 2), monitor=gg.GradientMonitor())
    with pytest.raises(ValueError, match="max_norm"):
        GradGuardHook(torch.nn.Linear(2, 2), max_norm=-1.0)


def test_monitor_module_skips_missing_gradients():
    model = TwoBranches()
    monitor = gg.GradientMonitor(names=[n for n, p in model.named_parameters() if p.requires_grad])
    x, y = _batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert monitor_module(monitor, model) == []
    assert monitor.summary()["steps"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_gradients_get_a_clear_error():  # pragma: no cover - no GPU on the CI machines
    model = torch.nn.Linear(2, 2).cuda()
    model(torch.ones(1, 2, device="cuda")).sum().backward()
    with pytest.raises(ValueError, match="no CUDA backend"):
        GradGuardHook(model)()


def test_top_level_functions_take_cpu_tensors_in_place():
    tensor = torch.full((3, 4), 10.0)
    total = gg.clip_by_global_norm([tensor], 1.0)
    assert total == pytest.approx(10 * 12**0.5) and tensor.norm().item() == pytest.approx(1.0, rel=1e-5)
    # every floating dtype, and a tensor that requires grad (read through detach(), as a gradient is)
    assert gg.global_norm([torch.ones(2, requires_grad=True)]) == pytest.approx(2**0.5)
    assert gg.global_norm([torch.full((4,), 2.0, dtype=torch.bfloat16)]) == 4.0
    with pytest.raises(ValueError, match=r"arrays\[0\]: NumPy cannot view a tensor on meta"):
        gg.global_norm([torch.ones(2, device="meta")])
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.ones(3)
    with pytest.raises(TypeError, match=r"arrays\[0\] is a torch Parameter: gradguard's functions take gradients"):
        gg.clip_by_global_norm([weight], 0.1)  # would otherwise scale the weights
    assert torch.equal(weight.detach(), torch.ones(3))


def test_the_hook_resumes_from_a_plain_torch_save(tmp_path):
    """A run stopped at step k and resumed from torch.save(hook.state_dict()) finds what the whole run finds."""

    def run(steps, start=0, state=None):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 2))
        hook = GradGuardHook(model)
        if state is not None:
            hook.load_state_dict(state)
        for step in range(start, steps):
            model.zero_grad()
            x = torch.randn(8, 6, generator=torch.Generator().manual_seed(step))
            scale = 1e5 if step == 35 else 1.0  # a spike the history must know to call one
            (model(x).pow(2).sum() * scale).backward()
            if step >= 20:
                model[0].weight.grad.zero_()  # a layer that dies
            hook()
        return hook

    whole = run(40)
    path = tmp_path / "hook.pt"
    torch.save(run(25).state_dict(), path)
    resumed = run(40, start=25, state=torch.load(path, weights_only=True))
    assert {f.kind for f in whole.monitor.findings} >= {"dead", "exploding"}
    assert resumed.monitor.findings == whole.monitor.findings and resumed.steps == 40
    with pytest.raises(ValueError, match="GradGuardHook state_dict: missing"):
        resumed.load_state_dict({"steps": 3})


def test_hook_numbers_steps_by_the_training_step_when_the_scaler_skips_some():
    """30 iterations, 3 of them overflowing: the monitor's 27 rows are numbered
    by iteration (gaps at the skipped ones), not 0-26."""
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    hook = GradGuardHook(model, optimizer=optimizer, scaler=scaler, max_norm=0.5)
    overflow = {5, 6, 17}
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    for iteration in range(30):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss * (float("inf") if iteration in overflow else 1.0)).backward()
        scaler.step(optimizer)
        scaler.update()
    steps = hook.monitor.history()["step"].tolist()
    assert steps == [i for i in range(30) if i not in overflow] and hook.steps == 27
    assert hook.monitor.findings == []
    flat = hook.monitor.latest()
    before, after = flat["gradguard/grad_norm_before_clip"], flat["gradguard/grad_norm_after_clip"]
    assert after == pytest.approx(min(before, 0.5), rel=1e-5)
    hook.remove()
    assert "update" not in vars(scaler)  # the scaler's own method again


def test_hook_records_the_norm_after_its_clip():
    torch.manual_seed(5)
    model = torch.nn.Linear(6, 3)
    hook = GradGuardHook(model, max_norm=0.1)
    model(torch.randn(8, 6)).pow(2).sum().backward()
    before = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    hook()
    after = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    flat = hook.monitor.latest()
    assert flat["gradguard/grad_norm_before_clip"] == pytest.approx(before, rel=1e-6)
    assert flat["gradguard/grad_norm_after_clip"] == pytest.approx(after, rel=1e-5)
    assert flat["gradguard/clipped"] == 1.0 and flat["gradguard/clip_rate"] == 1.0
    unclipped = GradGuardHook(model)
    unclipped()
    assert "gradguard/grad_norm_after_clip" not in unclipped.monitor.latest()  # no clip of its own: unknown


class _Poison(torch.nn.Module):
    """Passes its input through, except at one step, when it writes a NaN into it."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, x):
        return x * float("nan") if self.armed else x


def _poisoned_model():
    torch.manual_seed(6)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16),
        torch.nn.Tanh(),
        torch.nn.Sequential(torch.nn.Linear(16, 16), _Poison()),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )


@pytest.mark.parametrize("where", ["forward", "loss"])
def test_a_nan_is_attributed_to_the_module_where_it_was_born(where):
    model = _poisoned_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    hook = GradGuardHook(model, optimizer=optimizer, find_origin=True)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for step in range(8):
        model[2][1].armed = where == "forward" and step == 5
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        if where == "loss" and step == 5:
            loss = loss * torch.log(torch.tensor(-1.0))  # NaN born in the loss, after every module
        loss.backward()
        optimizer.step()
        if step == 5:
            break
    nonfinite = [f for f in hook.monitor.findings if "n_nan" in f.evidence]
    assert nonfinite and {f.step for f in nonfinite} == {5}
    expected = "forward output of `2.1`" if where == "forward" else "backward gradient of `4."
    assert all(f.evidence["origin"].startswith(expected) for f in nonfinite), nonfinite[0].evidence["origin"]
    assert expected in nonfinite[0].message
    # the first layer holds NaN too, but is not named as the origin
    assert any(f.layer == "0.weight" for f in nonfinite)
    hook.remove()
    assert not model._forward_hooks and not model[2][1]._forward_hooks


def test_find_origin_needs_the_module():
    model = _poisoned_model()
    with pytest.raises(TypeError, match="module itself"):
        GradGuardHook(model.named_parameters(), find_origin=True)


def test_a_layer_unfrozen_after_the_hook_was_made_joins_its_monitor():
    """Progressive unfreezing: a parameter frozen when the hook is made is read
    once it has a gradient, and joins the monitor from that step on."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    for parameter in model[2].parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    hook = GradGuardHook(model, optimizer=optimizer, max_norm=1.0)
    assert hook.monitor.names == ["0.weight", "0.bias"]
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    for step in range(6):
        if step == 3:
            for parameter in model[2].parameters():
                parameter.requires_grad_(True)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        expected = math.sqrt(
            sum(float(p.grad.double().square().sum()) for p in model.parameters() if p.grad is not None)
        )
        optimizer.step()
        assert hook.last_norm == pytest.approx(expected, rel=1e-6)
    assert hook.monitor.names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    norms = hook.monitor.history()["norm"]
    assert np.isnan(norms[:3, 2:]).all() and np.isfinite(norms[3:]).all() and (norms[3:] > 0).all()
