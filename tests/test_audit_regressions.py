"""One test per defect the outside audit found (issue 9), each its reproduction.

The general guards against each class of defect (refused calls change
nothing, reading functions never write, overlap refused everywhere) are in
test_refusals.py.
"""

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16
from gradguard import reference


def run_python(code, timeout=120):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def misaligned(values, dtype=np.float32):
    """A contiguous, writable array whose data address is not a multiple of its itemsize."""
    values = np.asarray(values, dtype=dtype)
    buffer = bytearray(values.nbytes + 1)
    array = np.frombuffer(buffer, dtype=dtype, offset=1, count=values.size).reshape(values.shape)
    array[...] = values
    assert not array.flags.aligned and array.flags.c_contiguous
    return array


# -- 1. use-after-free: every call owns its arrays ------------------------------------------------


def test_list_cleared_by_another_thread_during_the_call():
    result = run_python("""
        import threading, time
        import numpy as np, gradguard as gg
        for _ in range(6):
            arrays = [np.ones(10**7, np.float32)]
            fresh = []
            def clear():
                time.sleep(0.001)
                arrays.clear()
                fresh.append(np.zeros(10**7, np.float32))   # may reuse the freed block
            thread = threading.Thread(target=clear)
            thread.start()
            gg.clip_by_value(arrays, 0.5)
            thread.join()
            assert not fresh[0].any(), "an unrelated array was written"
        params = [np.ones(10**7, np.float32)]
        optimizer = gg.optim.SGD(params, lr=0.1)
        for _ in range(3):
            grads = [np.ones(10**7, np.float32)]
            thread = threading.Thread(target=lambda: (time.sleep(0.001), grads.clear(), params.clear()))
            thread.start()
            optimizer.step(grads)
            thread.join()
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


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


# -- 2. aliasing ------------------------------------------------------------------------------------


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


# -- 3. grad_stats on extreme finite values --------------------------------------------------------

EXTREMES = [
    np.array([3e38, -3e38, 1, 2], np.float32),
    np.concatenate([np.ones(99, np.float32), np.array([2e19], np.float32)]),
    (np.random.default_rng(0).standard_normal(1000) * 1e-38).astype(np.float32),
    np.array([1e-45, -1e-45, 0.0], np.float32),
    np.array([1e300, -1e300, 1.0], np.float64),
    np.array([1e-310, 3e-310], np.float64),
    np.array([65504.0, -65504.0, 1.0], np.float16),
]


@pytest.mark.parametrize("values", EXTREMES, ids=lambda v: f"{v.dtype}-{np.abs(v.astype(np.float64)).max():.0e}")
def test_grad_stats_extreme_values(simd_target, values):
    stats = gg.grad_stats([values])
    expected = reference.grad_stats([values])
    largest = float(np.abs(values.astype(np.float64)).max())
    assert stats.l2[0] == pytest.approx(gg.global_norm([values]), rel=1e-9)
    for field in ("mean", "std", "abs_mean"):
        assert abs(getattr(stats, field)[0] - expected[field][0]) <= 1e-6 * largest, field
    assert stats.n_nan[0] == 0 and stats.n_inf[0] == 0


def test_monitor_does_not_misread_extreme_layers():
    monitor = gg.GradientMonitor()
    grads = {
        "huge": np.array([3e38, -3e38, 1, 2], np.float32),
        "outlier": np.concatenate([np.ones(99, np.float32), np.array([2e19], np.float32)]),
        "normal": np.ones(10, np.float32),
    }
    for _ in range(6):
        findings = monitor.update(grads)
        for finding in findings:
            # 3e38 and 2e19 are exploding gradients, and said so with their true norms:
            # never "vanishing with norm 0", never "holds NaN/inf"
            assert finding.layer in ("huge", "outlier") and finding.kind == "exploding", finding
            assert "NaN/inf" not in finding.message and finding.evidence["norm"] > 1e19


# -- 4. refused calls change nothing ---------------------------------------------------------------


def test_agc_refuses_before_scaling_any_gradient():
    params = [np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)]
    good = np.full((4, 4), 10.0, np.float32)
    bad = misaligned(np.full((4, 4), 10.0))
    with pytest.raises(ValueError, match=r"grads\[1\] is not aligned"):
        gg.agc(params, [good, bad])
    assert (good == 10).all() and (bad == 10).all()


@pytest.mark.parametrize("clipper", [gg.AutoClip(), gg.ZClip(warmup_steps=2)], ids=["AutoClip", "ZClip"])
def test_adaptive_clippers_refuse_before_recording(clipper):
    frozen = np.ones(10, np.float32)
    frozen.flags.writeable = False
    before = clipper.state_dict()
    with pytest.raises(ValueError, match="read-only"):
        clipper([np.ones(10, np.float32), frozen])
    after = clipper.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(np.asarray(before[key], dtype=object), np.asarray(after[key], dtype=object))


def _adam():
    params = [np.ones(3, np.float32)]
    optimizer = gg.optim.Adam(params, lr=0.1, max_grad_norm=1.0)
    optimizer.step([np.full(3, 0.5, np.float32)])
    return optimizer


def test_half_valid_state_dict_changes_nothing():
    optimizer = _adam()
    saved = optimizer.state_dict()
    broken = optimizer.state_dict()
    broken["hyper"]["lr"] = 0.5
    broken["max_grad_norm"] = 2.0
    broken["step"] = 9
    broken["state"]["exp_avg"] = [np.zeros(4, np.float32)]  # wrong shape, found last
    with pytest.raises(ValueError, match="shape"):
        optimizer.load_state_dict(broken)
    assert optimizer.hyper == saved["hyper"] and optimizer.max_grad_norm == 1.0 and optimizer.step_count == 1
    np.testing.assert_array_equal(optimizer.state["exp_avg"][0], saved["state"]["exp_avg"][0])


# -- 5. state loaded with the constructor's rules --------------------------------------------------


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda s: s["hyper"].update(lr=math.nan), ValueError),
        (lambda s: s["hyper"].update(lr=-1.0), ValueError),
        (lambda s: s.update(max_grad_norm=-1.0), ValueError),
        (lambda s: s["hyper"].update(betas=(0.9, 1.0)), ValueError),
        (lambda s: s["hyper"].pop("eps"), ValueError),
        (lambda s: s.pop("step"), KeyError),
        (lambda s: s["state"].update(exp_avg=[np.zeros(3, np.complex64)]), TypeError),
        (lambda s: s["state"].update(momentum_buffer=[np.zeros(3, np.float32)]), ValueError),
        (lambda s: s.update(kind="SGD"), ValueError),
    ],
)
def test_invalid_optimizer_state_refused(change, error):
    optimizer = _adam()
    state = optimizer.state_dict()
    change(state)
    before = optimizer.state_dict()
    with pytest.raises(error):
        optimizer.load_state_dict(state)
    assert optimizer.state_dict()["hyper"] == before["hyper"] and optimizer.step_count == before["step"]


def test_sgd_state_into_adam_refused():
    params = [np.ones(3, np.float32)]
    sgd = gg.optim.SGD(params, lr=0.1, momentum=0.9)
    sgd.step([np.ones(3, np.float32)])
    with pytest.raises(ValueError):
        gg.optim.Adam([np.ones(3, np.float32)]).load_state_dict(sgd.state_dict())


@pytest.mark.parametrize("scale", [0.0, math.nan, -1.0, math.inf])
def test_loss_scaler_state_refused(scale):
    scaler = gg.LossScaler()
    state = scaler.state_dict()
    state["scale"] = scale
    with pytest.raises(ValueError):
        scaler.load_state_dict(state)
    assert scaler.get_scale() == 2.0**16


# -- 6. misaligned arrays ----------------------------------------------------------------------------


def test_misaligned_reads_are_correct(simd_target):
    values = np.random.default_rng(1).standard_normal(1000)
    array = misaligned(values)
    exact = values.astype(np.float32)
    assert gg.global_norm([array]) == gg.global_norm([exact])
    assert gg.grad_stats([array]).std[0] == gg.grad_stats([exact]).std[0]
    monitor = gg.GradientMonitor()
    monitor.update({"w": array})
    params = [np.ones(1000, np.float32)]
    gg.optim.SGD(params, lr=1.0).step([array])
    np.testing.assert_array_equal(params[0], np.float32(1) - exact)
    grads = [np.full((10, 100), 1.0, np.float32)]
    gg.agc([misaligned(np.ones((10, 100)))], grads, clipping=0.01)
    np.testing.assert_allclose(grads[0], 0.01, rtol=1e-6)


def test_misaligned_in_place_refused_with_the_reason():
    array = misaligned(np.ones(100))
    for call in (
        lambda: gg.clip_by_global_norm([array], 1.0),
        lambda: gg.clip_by_value([array], 0.5),
        lambda: gg.unscale_([array], 0.5),
    ):
        with pytest.raises(ValueError, match="not aligned"):
            call()
    with pytest.raises(ValueError, match="not aligned"):
        gg.layer_norm(np.ones((2, 50), np.float32), out=misaligned(np.ones((2, 50))))
    assert (array == 1).all()


# -- 7. the loss scale stays in float32 range ------------------------------------------------------


def test_loss_scaler_never_grows_past_float32():
    scaler = gg.LossScaler(init_scale=1e38, growth_factor=16, growth_interval=1)
    for _ in range(5):
        scaler.update(False)
    assert scaler.get_scale() == 1e38
    scaler.update(True)
    assert scaler.get_scale() == 0.5e38


# -- 8. dicts are matched by name ---------------------------------------------------------------------


def test_optimizer_matches_gradient_dicts_by_name():
    params = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    optimizer = gg.optim.SGD(params, lr=1.0)
    optimizer.step({"b": np.full(3, 2.0, np.float32), "a": np.full(3, 0.5, np.float32)})  # reversed
    np.testing.assert_array_equal(params["a"], 0.5)
    np.testing.assert_array_equal(params["b"], -1.0)
    with pytest.raises(ValueError, match=r"missing \['b'\].*unexpected \['c'\]"):
        optimizer.step({"a": np.ones(3, np.float32), "c": np.ones(3, np.float32)})


def test_monitor_matches_dicts_by_name():
    monitor = gg.GradientMonitor()
    monitor.update({"small": np.full(4, 1e-3, np.float32), "large": np.full(4, 10.0, np.float32)})
    monitor.update({"large": np.full(4, 10.0, np.float32), "small": np.full(4, 1e-3, np.float32)})
    history = monitor.history()
    np.testing.assert_allclose(history["norm"][:, history["layers"].index("small")], 2e-3, rtol=1e-6)
    with pytest.raises(ValueError, match=r"missing \['large'\]"):
        monitor.update({"small": np.ones(4, np.float32)})
    assert monitor.summary()["steps"] == 2


# -- 9. smaller ones ------------------------------------------------------------------------------------


def test_autoclip_clips_at_the_percentile_itself():
    grads = [np.full(4, 3.0, np.float32)]
    norm, threshold = gg.AutoClip(percentile=10)(grads)
    assert norm == threshold == 6.0
    expected = [np.full(4, 3.0, np.float32)]
    gg.clip_by_global_norm(expected, threshold)
    np.testing.assert_array_equal(grads[0], expected[0])
    assert grads[0][0] < 3.0


@pytest.mark.parametrize("shape", [(1, 7), (1, 1, 1, 6)])
def test_agc_last_treats_squeezed_vectors_as_one_unit(shape):
    weights = np.ones(shape, np.float32)
    grads = np.zeros(shape, np.float32)
    grads.reshape(-1)[0] = 1.0
    gg.agc([weights], [grads], clipping=0.5, unit_axis="last")
    assert grads.reshape(-1)[0] == 1.0  # ||G|| = 1 < 0.5 * sqrt(n): Optax leaves it


def test_torch_drop_in_raises_a_runtime_error():
    torch = pytest.importorskip("torch")
    from gradguard.torch import clip_grad_norm_

    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.tensor([1.0, math.inf, 0.0])
    with pytest.raises(RuntimeError):
        clip_grad_norm_([parameter], 1.0, error_if_nonfinite=True)
    with pytest.raises(FloatingPointError):
        clip_grad_norm_([parameter], 1.0, error_if_nonfinite=True)


@pytest.mark.parametrize("param", [True, [1], {"a": "b"}])
def test_calculate_gain_refuses_bad_slopes_like_torch(param):
    with pytest.raises(ValueError):
        gg.init.calculate_gain("leaky_relu", param)


def test_kaiming_on_zero_elements_is_a_no_op_and_bfloat16_is_filled():
    empty = np.zeros((0, 3), np.float32)
    for initialiser in (gg.init.kaiming_uniform_, gg.init.kaiming_normal_):
        with pytest.warns(UserWarning, match="no-op"):
            assert initialiser(empty) is empty
    if BFLOAT16 is not None:
        weight = np.zeros((16, 8), BFLOAT16)
        gg.init.kaiming_normal_(weight, rng=0)
        gg.init.xavier_uniform_(weight, rng=0)
        gg.init.orthogonal_(weight, rng=0)
        assert np.abs(weight.astype(np.float32)).max() > 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: gg.clip_by_global_norm([np.ones(3, np.float32)], "1"),
        lambda: gg.clip_by_global_norm([np.ones(3, np.float32)], True),
        lambda: gg.global_norm([np.ones(3, np.float32)], ord=True),
        lambda: gg.LossScaler(growth_interval=True),
        lambda: gg.optim.SGD([np.ones(3, np.float32)], lr=True),
    ],
)
def test_bool_and_str_scalars_refused(call):
    with pytest.raises(TypeError):
        call()


def test_huge_integer_bound_is_infinite():
    array = np.ones(3, np.float32)
    assert gg.clip_by_global_norm([array], 10**400) == pytest.approx(math.sqrt(3))
    assert (array == 1).all()


@pytest.mark.parametrize("ord", [50.0, 2000.0, 1e5])
def test_large_orders_rescale(simd_target, ord):
    values = np.random.default_rng(3).uniform(0.5, 4.0, 1000).astype(np.float32)
    expected = reference.global_norm([values], ord)
    assert gg.global_norm([values], ord=ord) == pytest.approx(expected, rel=1e-6)
    clipped = values.copy()
    gg.clip_by_global_norm([clipped], 1e9, ord=ord)
    np.testing.assert_array_equal(clipped, values)  # far below the bound: untouched, not zeroed


def test_set_num_threads_that_fails_part_way_keeps_the_truth():
    result = run_python("""
        import resource, numpy as np, gradguard as gg
        gg.set_num_threads(2)
        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * resource.getpagesize()
        # room for a few thread stacks only
        resource.setrlimit(resource.RLIMIT_AS, (used + (96 << 20), resource.RLIM_INFINITY))
        try:
            gg.set_num_threads(5000)
        except RuntimeError as error:
            print("refused:", error)
        print(gg.get_num_threads())
        print(gg.global_norm([np.ones(1_000_000, np.float32)]))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("refused:")
    assert lines[1] == "2" and float(lines[2]) == 1000.0


def test_errors_name_the_layer():
    monitor = gg.GradientMonitor()
    with pytest.raises(TypeError, match=r"grads\[1\] \('h.0.bias'\)"):
        monitor.update({"h.0.weight": np.ones(3, np.float32), "h.0.bias": np.arange(3)})
    with pytest.raises(ValueError, match=r"grads\[1\] \('b'\) is read-only"):
        frozen = np.ones(3, np.float32)
        frozen.flags.writeable = False
        gg.agc({"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}, {"a": np.ones(3, np.float32), "b": frozen})


def test_scratch_is_released_after_a_call_on_a_million_arrays():
    result = run_python("""
        import numpy as np, gradguard as gg
        def resident():
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * 4096
        arrays = [np.zeros(1, np.float32)] * 1_000_000   # one array, a million times: no Python memory
        gg.grad_stats(arrays[:10]); gg.global_norm(arrays[:10])
        before = resident()
        gg.grad_stats(arrays); gg.global_norm(arrays); gg.clip_by_value(arrays[:1], 1.0)
        print((resident() - before) >> 20)
    """)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) < 64  # MiB still resident (the columns returned are 80 MB, freed)
