"""A refused call changes nothing: a property test over the guard, the
optimiser, the schedule and the monitor. Hypothesis draws a healthy run of
some steps, then one call that must be refused; every state_dict() and every
array must then be bit-identical to what they were before it."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradguard as gg


def frozen(value):
    """A comparable, bit-exact form of a state dict (arrays by dtype, shape and bytes; NaN equal to NaN)."""
    if isinstance(value, dict):
        return tuple((key, frozen(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(frozen(item) for item in value)
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", value.hex() if not math.isnan(value) else "nan")
    return value


SHAPES = {"w": (6, 5), "b": (5,), "v": (7,)}


def _grads(rng, scale=1.0, dtype=np.float32):
    return {name: (rng.standard_normal(shape) * scale).astype(dtype) for name, shape in SHAPES.items()}


def _setup(kind, clip, seed):
    rng = np.random.default_rng(seed)
    params = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()}
    groups = [{"params": {"w": params["w"], "b": params["b"]}}, {"params": {"v": params["v"]}, "lr": 0.05}]
    optimizer = {
        "sgd": lambda: gg.optim.SGD(groups, lr=0.1, momentum=0.9),
        "adamw": lambda: gg.optim.AdamW(groups, lr=0.01),
        "rmsprop": lambda: gg.optim.RMSprop(groups, lr=0.01, centered=True),
    }[kind]()
    monitor = gg.GradientMonitor(names=list(SHAPES), window=16, min_history=4)
    guard = gg.Guard(optimizer, clip=clip, monitor=monitor, snapshot_every=2, window=8)
    schedule = gg.optim.LambdaLR(optimizer, lambda epoch: 0.9**epoch)
    return rng, params, optimizer, monitor, guard, schedule


def _everything(params, optimizer, monitor, guard, schedule):
    return frozen(
        {
            "params": dict(params),
            "optimizer": optimizer.state_dict(),
            "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
            "monitor": monitor.state_dict(),
            "guard": guard.state_dict(),
            "schedule": schedule.state_dict(),
            "clip_threshold": optimizer.max_grad_norm,
        }
    )


def _refusals(rng):
    """name -> a call on (optimizer, monitor, guard, schedule) that must be refused."""
    good = _grads(rng)
    wrong_shape = dict(good, w=np.ones((5, 6), np.float32))
    float64 = dict(good, b=good["b"].astype(np.float64))
    missing = {name: good[name] for name in ("w", "v")}
    unknown = dict(good, extra=np.ones(3, np.float32))
    spike = _grads(rng, scale=1e6)
    read_only = dict(good)
    read_only["w"] = read_only["w"].copy()
    read_only["w"].setflags(write=False)

    def boom(epoch):
        raise RuntimeError("a schedule's lambda failed")

    return {
        "guard wrong shape": lambda o, m, g, s: g.step(wrong_shape),
        "guard float64": lambda o, m, g, s: g.step(float64),
        "guard missing": lambda o, m, g, s: g.step(missing),
        "guard unknown": lambda o, m, g, s: g.step(unknown),
        "guard loss str": lambda o, m, g, s: g.step(spike, loss="x"),
        "guard spike wrong shape": lambda o, m, g, s: g.step(dict(spike, w=np.ones((5, 6), np.float32))),
        "guard not arrays": lambda o, m, g, s: g.step({"w": "x", "b": good["b"], "v": good["v"]}),
        "optimizer grad_norm": lambda o, m, g, s: o.step(good, grad_norm=-1.0),
        "clip read-only": lambda o, m, g, s: gg.clip_by_global_norm(read_only, 1e-3),
        "optimizer skip flag": lambda o, m, g, s: o.step(good, skip_nonfinite="no"),
        "optimizer scaler": lambda o, m, g, s: o.step(good, loss_scaler=3),
        "optimizer negative lr": lambda o, m, g, s: (o.param_groups[1].__setitem__("lr", -1.0), o.step(good)),
        "optimizer group removed": lambda o, m, g, s: (o.param_groups.pop(), o.step(good)),
        "optimizer load": lambda o, m, g, s: o.load_state_dict({**o.state_dict(), "step": -1}),
        "monitor missing layer": lambda o, m, g, s: m.update(missing),
        "monitor new layer, one missing": lambda o, m, g, s: m.update(dict(missing, extra=np.ones(3, np.float32))),
        "monitor step": lambda o, m, g, s: m.update(good, step="3"),
        "monitor load": lambda o, m, g, s: m.load_state_dict({**m.state_dict(), "last_step": "x"}),
        "monitor stats": lambda o, m, g, s: m.update_stats(gg.grad_stats(missing)),
        "schedule lambda": lambda o, m, g, s: (s.lr_lambdas.__setitem__(1, boom), s.step()),
        "schedule nan": lambda o, m, g, s: (s.lr_lambdas.__setitem__(0, lambda e: math.nan), s.step()),
        "schedule load": lambda o, m, g, s: s.load_state_dict({"base_lrs": [0.1], "last_epoch": 2}),
        "guard load": lambda o, m, g, s: g.load_state_dict({**g.state_dict(), "lr_scale": 2.0}),
        "guard load clip": lambda o, m, g, s: g.load_state_dict({**g.state_dict(), "clip": {"mean": "x"}}),
    }


REFUSAL_NAMES = sorted(_refusals(np.random.default_rng(0)))


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["sgd", "adamw", "rmsprop"]),
    clip=st.sampled_from([None, 1.0, "zclip", "autoclip"]),
    steps=st.integers(0, 12),
    spikes=st.lists(st.integers(0, 11), max_size=3),
    refusal=st.sampled_from(REFUSAL_NAMES),
    seed=st.integers(0, 2**16),
)
def test_every_refused_call_leaves_every_state_bit_identical(kind, clip, steps, spikes, refusal, seed):
    rng, params, optimizer, monitor, guard, schedule = _setup(kind, clip, seed)
    for step in range(steps):
        guard.step(_grads(rng, scale=1e4 if step in spikes else 1.0))
        schedule.step()
        guard.set_lr(optimizer.param_groups[0]["lr"])
    before = _everything(params, optimizer, monitor, guard, schedule)
    groups, lambdas = list(optimizer.param_groups), list(schedule.lr_lambdas)
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    with pytest.raises((TypeError, ValueError, RuntimeError, KeyError)):
        _refusals(rng)[refusal](optimizer, monitor, guard, schedule)
    # undo the edits the refused call was made with (a group removed, a lambda swapped, an lr set by hand)
    optimizer.param_groups[:] = groups
    schedule.lr_lambdas[:] = lambdas
    for group, lr in zip(optimizer.param_groups, saved_lrs):
        group["lr"] = lr
    assert _everything(params, optimizer, monitor, guard, schedule) == before, refusal
