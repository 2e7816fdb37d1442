"""General guards (hypothesis) for three classes of defect:

- a refused call leaves every argument and every object's state bit-identical
  (every in-place function and every stateful object);
- reading functions never modify their inputs;
- arrays that share memory are refused by every in-place entry point.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradguard as gg
from conftest import misaligned

DTYPES = [np.float32, np.float64, np.float16]


@st.composite
def good_arrays(draw, min_count=1, max_count=5):
    count = draw(st.integers(min_count, max_count))
    arrays = []
    for _ in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        size = draw(st.sampled_from([0, 1, 7, 16, 17, 100, 1000]))
        seed = draw(st.integers(0, 2**16))
        scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
        values = np.random.default_rng(seed).standard_normal(size) * scale
        if draw(st.booleans()) and size:
            values[draw(st.integers(0, size - 1))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        arrays.append(values.astype(dtype))
    return arrays


# Each makes an element that an in-place call must refuse, from the list of good arrays.
BAD_FOR_WRITING = {
    "read-only": lambda arrays: _frozen(arrays[0].copy()),
    "strided": lambda arrays: np.ones(20, np.float32)[::2],
    "misaligned": lambda arrays: misaligned(np.ones(9, np.float32)),
    "int dtype": lambda arrays: np.ones(5, np.int32),
    "not an array": lambda arrays: [1.0, 2.0],
    "the same array": lambda arrays: arrays[0],
    "overlapping view": lambda arrays: _overlapping(arrays),
}
# A reading argument refuses only what it cannot read.
BAD_FOR_READING = {"int dtype": BAD_FOR_WRITING["int dtype"], "not an array": BAD_FOR_WRITING["not an array"]}


def _frozen(array):
    array.flags.writeable = False
    return array


def _overlapping(arrays):
    """Replaces arrays[0] by a view of a larger buffer and returns a second, overlapping view."""
    buffer = np.zeros(arrays[0].size + 8, arrays[0].dtype)
    buffer[: arrays[0].size] = arrays[0]
    arrays[0] = buffer[: arrays[0].size]
    return buffer[arrays[0].size // 2 :]


def snapshot(values):
    """Bytes of every array (and the repr of anything else), to compare bit for bit."""
    return [value.tobytes() if isinstance(value, np.ndarray) else repr(value) for value in values]


def state_of(obj):
    if obj is None:
        return None
    if isinstance(obj, gg.GradientMonitor):
        history = obj.history()
        return (
            repr({key: value.tobytes() if isinstance(value, np.ndarray) else value for key, value in history.items()}),
            repr(obj.summary()),
            repr(obj.findings),
        )
    state = obj.state_dict()
    return repr(
        {
            key: (
                value.tobytes()
                if isinstance(value, np.ndarray)
                else repr([b.tobytes() if isinstance(b, np.ndarray) else b for b in value])
                if isinstance(value, list)
                else value
            )
            for key, value in _flatten(state).items()
        }
    )


def _flatten(state, prefix=""):
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _optimizer_for(arrays):
    params = [np.ones(np.shape(a), np.float32) if isinstance(a, np.ndarray) else np.ones(2, np.float32) for a in arrays]
    optimizer = gg.optim.Adam(params, lr=0.1, max_grad_norm=1.0)
    optimizer.step([np.full(p.shape, 0.5, np.float32) for p in params])
    return optimizer


# name -> (make the stateful object or None, call(obj, arrays))
IN_PLACE = {
    "clip_by_global_norm": (None, lambda obj, arrays: gg.clip_by_global_norm(arrays, 0.1)),
    "clip_by_norm": (None, lambda obj, arrays: gg.clip_by_norm(arrays, 0.1)),
    "clip_by_value": (None, lambda obj, arrays: gg.clip_by_value(arrays, 0.1)),
    "clip_with_norm_": (None, lambda obj, arrays: gg.clip_with_norm_(arrays, 0.1, 10.0)),
    "unscale_": (None, lambda obj, arrays: gg.unscale_(arrays, 0.5)),
    "agc": (
        None,
        lambda obj, arrays: gg.agc(
            [np.ones(np.shape(a), np.float32) if isinstance(a, np.ndarray) else np.ones(2, np.float32) for a in arrays],
            arrays,
        ),
    ),
    "AutoClip": (lambda arrays: _warm(gg.AutoClip(), arrays), lambda obj, arrays: obj(arrays)),
    "ZClip": (lambda arrays: _warm(gg.ZClip(warmup_steps=2), arrays), lambda obj, arrays: obj(arrays)),
}


def _warm(clipper, arrays):
    clipper([np.ones(3, np.float32)])
    return clipper


@settings(max_examples=60, deadline=None)
@given(good_arrays(), st.sampled_from(sorted(IN_PLACE)), st.sampled_from(sorted(BAD_FOR_WRITING)), st.data())
def test_refused_in_place_call_changes_nothing(arrays, name, bad_kind, data):
    make, call = IN_PLACE[name]
    bad = BAD_FOR_WRITING[bad_kind](arrays)
    if bad_kind in ("the same array", "overlapping view") and arrays[0].size == 0:
        return  # an empty array shares no memory
    position = data.draw(st.integers(1, len(arrays)))
    arrays.insert(position, bad)
    obj = make(arrays) if make else None
    before, state_before = snapshot(arrays), state_of(obj)
    with pytest.raises((ValueError, TypeError)):
        call(obj, arrays)
    assert snapshot(arrays) == before
    assert state_of(obj) == state_before


@settings(max_examples=40, deadline=None)
@given(good_arrays(), st.sampled_from(sorted(BAD_FOR_READING) + ["shape", "overlaps a parameter"]), st.data())
def test_refused_optimizer_step_changes_nothing(arrays, bad_kind, data):
    optimizer = _optimizer_for(arrays)
    grads = [np.full(p.shape, 0.25, np.float32) for p in optimizer.params]
    position = data.draw(st.integers(0, len(grads) - 1))
    if bad_kind == "shape":
        grads[position] = np.ones(grads[position].size + 1, np.float32)
    elif bad_kind == "overlaps a parameter":
        if optimizer.params[position].size == 0:
            return
        grads[position] = optimizer.params[position]
    else:
        grads[position] = BAD_FOR_READING[bad_kind](grads)
    params_before, state_before = snapshot(optimizer.params), state_of(optimizer)
    scaler = gg.LossScaler()
    with pytest.raises((ValueError, TypeError)):
        optimizer.step(grads, loss_scaler=scaler)
    assert snapshot(optimizer.params) == params_before
    assert state_of(optimizer) == state_before
    assert scaler.state_dict() == gg.LossScaler().state_dict()


@settings(max_examples=30, deadline=None)
@given(good_arrays(min_count=2), st.sampled_from(sorted(BAD_FOR_READING)), st.data())
def test_refused_monitor_update_changes_nothing(arrays, bad_kind, data):
    monitor = gg.GradientMonitor()
    monitor.update(arrays)
    position = data.draw(st.integers(0, len(arrays) - 1))
    bad = list(arrays)
    bad[position] = BAD_FOR_READING[bad_kind](arrays)
    before = state_of(monitor)
    with pytest.raises((ValueError, TypeError)):
        monitor.update(bad)
    assert state_of(monitor) == before


# -- reading functions never write ------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(good_arrays(), st.booleans())
def test_reading_functions_leave_inputs_untouched(arrays, strided):
    if strided:
        arrays = [np.repeat(a, 2)[::2] for a in arrays]
    before = snapshot(arrays)
    gg.global_norm(arrays)
    gg.global_norm(arrays, ord=3.0)
    gg.grad_stats(arrays)
    monitor = gg.GradientMonitor()
    monitor.update(arrays)
    assert snapshot(arrays) == before


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 70), st.sampled_from(DTYPES), st.integers(0, 2**16))
def test_normalisation_leaves_inputs_untouched(rows, features, dtype, seed):
    rng = np.random.default_rng(seed)
    x, residual, dy = (rng.standard_normal((rows, features)).astype(dtype) for _ in range(3))
    weight, bias = rng.standard_normal(features).astype(np.float32), rng.standard_normal(features).astype(np.float32)
    inputs = [x, residual, dy, weight, bias]
    before = snapshot(inputs)
    _, mean, rstd = gg.layer_norm(x, weight, bias, return_stats=True)
    gg.layer_norm(x, weight, bias, residual=residual)
    _, rms_rstd = gg.rms_norm(x, weight, return_stats=True)
    statistics = [mean, rstd, rms_rstd]
    statistics_before = snapshot(statistics)
    gg.layer_norm_backward(dy, x, mean, rstd, weight)
    gg.rms_norm_backward(dy, x, rms_rstd, weight)
    assert snapshot(inputs) == before and snapshot(statistics) == statistics_before


def test_optimizer_and_agc_leave_read_arrays_untouched():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3)]
    weights = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(3)]
    before = snapshot(grads)
    for optimizer in (gg.optim.SGD, gg.optim.Adam, gg.optim.RMSprop):
        optimizer([np.zeros((8, 4), np.float32) for _ in range(3)], lr=0.1, max_grad_norm=0.5).step(grads)
    weights_before = snapshot(weights)
    gg.agc(weights, [g.copy() for g in grads])
    assert snapshot(grads) == before and snapshot(weights) == weights_before


# -- aliasing on every in-place entry point --------------------------------------------------------

ENTRY_POINTS = {
    **{name: call for name, (make, call) in IN_PLACE.items() if make is None},
    "AutoClip": lambda obj, arrays: gg.AutoClip()(arrays),
    "ZClip": lambda obj, arrays: gg.ZClip()(arrays),
    "SGD": lambda obj, arrays: gg.optim.SGD(arrays, lr=0.1),
    "agc params and grads": lambda obj, arrays: gg.agc([arrays[1]], [arrays[0]]),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("overlap", ["exact", "partial", "contained"])
def test_every_in_place_entry_point_refuses_shared_memory(name, overlap):
    buffer = np.arange(64, dtype=np.float32)
    first = buffer[:32]
    second = {"exact": buffer[:32], "partial": buffer[16:48], "contained": buffer[8:16]}[overlap]
    if name == "agc params and grads":  # a weight and a gradient of the same shape, sharing memory
        start = max(0, (second.__array_interface__["data"][0] - buffer.__array_interface__["data"][0]) // 4 - 4)
        first = buffer[start : start + second.size]
    before = buffer.copy()
    with pytest.raises(ValueError, match="same memory|overlap"):
        ENTRY_POINTS[name](None, [first, second])
    np.testing.assert_array_equal(buffer, before)


def test_the_same_array_twice_is_refused_and_untouched():
    a = np.ones(2**20, np.float32)
    with pytest.raises(ValueError, match=r"arrays\[0\] and arrays\[1\] are the same memory"):
        gg.clip_by_global_norm([a, a], 1.0)
    assert (a == 1).all()
    # reading twice is fine
    assert gg.global_norm([a, a]) == pytest.approx(math.sqrt(2 * 2**20))


@pytest.mark.parametrize(
    "call",
    [
        lambda arrays: gg.clip_by_global_norm(arrays, 1.0),
        lambda arrays: gg.clip_by_norm(arrays, 1.0),
        lambda arrays: gg.clip_by_value(arrays, 0.5),
        lambda arrays: gg.clip_with_norm_(arrays, 1.0, 100.0),
        lambda arrays: gg.unscale_(arrays, 0.5),
    ],
)
def test_overlapping_views_are_refused(call):
    base = np.ones(1000, np.float32)
    with pytest.raises(ValueError, match=r"\[0\] \('w'\) and .*\[1\] \('b'\) overlap in memory"):
        call({"w": base[100:600], "b": base[:200]})
    assert (base == 1).all()


def test_sgd_over_one_parameter_twice_is_refused():
    p = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="same memory"):
        gg.optim.SGD([p, p], lr=0.1)


def test_gradient_overlapping_a_parameter_is_refused():
    buffer = np.ones(20, np.float32)
    params, grad = [buffer[:10]], buffer[5:15]
    optimizer = gg.optim.Adam(params, lr=0.1)
    with pytest.raises(ValueError, match=r"overlap"):
        optimizer.step([grad])
    assert (buffer == 1).all() and optimizer.step_count == 0


@pytest.mark.parametrize("overlapped", ["x", "residual", "weight"])
def test_layer_norm_out_partly_overlapping_an_input(overlapped):
    buffer = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    x = buffer[:32].reshape(4, 8).copy()
    residual = np.ones((4, 8), np.float32)
    weight = np.ones(8, np.float32)
    out_buffer = np.zeros(40, np.float32)
    source = {"x": x, "residual": residual, "weight": weight}[overlapped]
    shared = np.zeros(source.size + 40, np.float32)
    shared[: source.size] = source.ravel()
    arguments = {"x": x, "residual": residual, "weight": weight}
    arguments[overlapped] = shared[: source.size].reshape(source.shape)
    out = shared[4:36].reshape(4, 8)
    before = shared.copy()
    with pytest.raises(ValueError, match=f"out overlaps {overlapped}"):
        gg.layer_norm(arguments["x"], arguments["weight"], residual=arguments["residual"], out=out)
    np.testing.assert_array_equal(shared, before)
    del out_buffer
