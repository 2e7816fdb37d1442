"""Bad input: a clear exception naming the argument, and nothing written."""

import dataclasses
import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16, misaligned, run_python


def good(n=10):
    return np.linspace(-5, 5, n).astype(np.float32)


IN_PLACE = [
    lambda arrays: gg.clip_by_global_norm(arrays, 0.1),
    lambda arrays: gg.clip_by_norm(arrays, 0.1),
    lambda arrays: gg.clip_by_value(arrays, 0.1),
]
READING = [gg.global_norm, gg.grad_stats]


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (np.arange(10), TypeError, "int64"),
        (np.arange(10, dtype=np.complex64), TypeError, "complex64"),
        (np.array(["a"], dtype=object), TypeError, "object"),
        ([1.0, 2.0], TypeError, "must be a NumPy array, got list"),
        (3.0, TypeError, "got float"),
        (np.arange(10, dtype=">f4"), TypeError, "byte order"),
    ],
)
def test_refused_types_name_the_position(bad, error, words):
    for operation in IN_PLACE + READING:
        first, last = good(), good()
        with pytest.raises(error, match=r"arrays\[1\]") as info:
            operation([first, bad, last])
        assert words in str(info.value)
        np.testing.assert_array_equal(first, good())  # nothing written
        np.testing.assert_array_equal(last, good())


def test_names_appear_in_errors():
    with pytest.raises(TypeError, match=r"arrays\[1\] \('h.0.bias'\)"):
        gg.global_norm({"h.0.weight": good(), "h.0.bias": np.arange(3)})


def test_read_only_array_refused_before_any_write():
    first, frozen = good(), good()
    frozen.flags.writeable = False
    for operation in IN_PLACE:
        with pytest.raises(ValueError, match=r"arrays\[1\] is read-only"):
            operation([first, frozen])
        np.testing.assert_array_equal(first, good())
    assert gg.global_norm([first, frozen]) > 0  # reading is fine


def test_broadcast_view_is_read_only():
    view = np.broadcast_to(np.float32(2.0), (100,))
    with pytest.raises(ValueError, match="read-only"):
        gg.clip_by_global_norm([view], 1.0)
    assert gg.global_norm([view]) == pytest.approx(20.0)


def test_non_contiguous_in_place_is_refused_not_misread():
    base = good(40).reshape(4, 10)
    before = base.copy()
    with pytest.raises(ValueError, match=r"arrays\[0\] is not contiguous"):
        gg.clip_by_global_norm([base[:, ::2]], 0.1)
    np.testing.assert_array_equal(base, before)


def test_fortran_order_is_clipped_in_place():
    base = np.asfortranarray(good(40).reshape(4, 10))
    expected = base * np.float32(0.5 / np.linalg.norm(base.astype(np.float64)))
    gg.clip_by_global_norm([base], 0.5, eps=0)
    np.testing.assert_allclose(base, expected, rtol=1e-6)


@pytest.mark.parametrize("max_norm", [-1.0, math.nan, "x", None])
def test_bad_max_norm(max_norm):
    arrays = [good()]
    with pytest.raises((ValueError, TypeError), match="max_norm"):
        gg.clip_by_global_norm(arrays, max_norm)
    with pytest.raises((ValueError, TypeError), match="max_norm"):
        gg.clip_by_norm(arrays, max_norm)
    np.testing.assert_array_equal(arrays[0], good())


@pytest.mark.parametrize("ord", [0, -1, math.nan, -math.inf, "nuc", None])
def test_bad_ord(ord):
    with pytest.raises((ValueError, TypeError), match="ord"):
        gg.global_norm([good()], ord=ord)


@pytest.mark.parametrize("eps", [-1e-6, math.nan, math.inf])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        gg.clip_by_global_norm([good()], 1.0, eps=eps)


def test_bad_clip_value_arguments():
    with pytest.raises(ValueError, match="clip_value"):
        gg.clip_by_value([good()], -1.0)
    with pytest.raises(TypeError, match="either"):
        gg.clip_by_value([good()], 1.0, min_value=0.0)
    with pytest.raises(TypeError, match="needs"):
        gg.clip_by_value([good()])
    with pytest.raises(ValueError, match="must not exceed"):
        gg.clip_by_value([good()], min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="NaN"):
        gg.clip_by_value([good()], min_value=math.nan)


def test_container_type():
    with pytest.raises(TypeError, match="list, tuple or dict"):
        gg.global_norm(5)
    with pytest.raises(TypeError, match="list, tuple or dict"):
        gg.global_norm("abc")
    # a single array, a tuple and a generator are accepted
    assert gg.global_norm(good()) == gg.global_norm((good(),)) == gg.global_norm(a for a in [good()])


def test_bfloat16_accepted_when_available():
    if BFLOAT16 is None:
        pytest.skip("ml_dtypes is not installed")
    assert gg.global_norm([np.ones(4, BFLOAT16)]) == 2.0


def test_set_num_threads_validation():
    with pytest.raises(ValueError):
        gg.set_num_threads(0)
    with pytest.raises(TypeError):
        gg.set_num_threads(1.5)


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
            try:
                optimizer.step(grads)
            except ValueError as error:  # cleared before the step took its snapshot: a refusal, not a crash
                assert "grads has 0 arrays" in str(error), error
            thread.join()
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


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


def test_real_takes_every_kind_of_number_alike():
    """Python floats and ints take a shorter path through the scalar check than
    NumPy scalars and 0-d arrays: both must give the same float and refusals."""
    from gradguard._arguments import real

    for plain, other in [(2, np.int64(2)), (2.5, np.float32(2.5)), (4.0, np.array(4.0)), (-0.0, np.float64(-0.0))]:
        assert real(plain, "x") == real(other, "x") == float(plain)
        assert type(real(plain, "x")) is float and type(real(other, "x")) is float
    assert real(10**400, "x") == math.inf and real(-(10**400), "x") == -math.inf
    for value in (math.nan, np.float64(math.nan)):
        with pytest.raises(ValueError, match="x must not be NaN"):
            real(value, "x")
        assert math.isnan(real(value, "x", allow_nan=True))
    for value in (0, 0.0, np.float32(0.0)):
        with pytest.raises(ValueError, match=r"x must be a number in \(0, inf\), got"):
            real(value, "x", low=0.0, low_open=True)
    for value in (math.inf, np.float64(math.inf)):
        with pytest.raises(ValueError, match="finite"):
            real(value, "x", allow_inf=False)
    for value in (True, np.bool_(True), "1", [1.0]):
        with pytest.raises(TypeError, match="x must be a real number"):
            real(value, "x")


def test_huge_integer_bound_is_infinite():
    array = np.ones(3, np.float32)
    assert gg.clip_by_global_norm([array], 10**400) == pytest.approx(math.sqrt(3))
    assert (array == 1).all()


def test_errors_name_the_layer():
    monitor = gg.GradientMonitor()
    with pytest.raises(TypeError, match=r"grads\[1\] \('h.0.bias'\)"):
        monitor.update({"h.0.weight": np.ones(3, np.float32), "h.0.bias": np.arange(3)})
    with pytest.raises(ValueError, match=r"grads\[1\] \('b'\) is read-only"):
        frozen = np.ones(3, np.float32)
        frozen.flags.writeable = False
        gg.agc({"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}, {"a": np.ones(3, np.float32), "b": frozen})


def test_keys_equal_as_strings_are_refused_everywhere():
    colliding = {1: np.ones(3, np.float32), "1": np.ones(3, np.float32)}
    for call in (gg.global_norm, gg.grad_stats, lambda g: gg.clip_by_global_norm(g, 1.0)):
        with pytest.raises(ValueError, match=r"equal as strings: \['1'\]"):
            call(colliding)
    with pytest.raises(ValueError, match="unique"):
        gg.GradientMonitor(names=["a", "a"])
    stats = gg.grad_stats([np.ones(3), np.ones(3)])
    repeated = dataclasses.replace(stats, names=("a", "a"))
    with pytest.raises(ValueError, match="more than once"):
        gg.GradientMonitor().update_stats(repeated)


@pytest.mark.parametrize("value", ["no", 1, None, "False"])
def test_flags_are_bools_not_truthy_values(value):
    optimizer = gg.optim.SGD([np.ones(3, np.float32)], lr=0.1)
    with pytest.raises(TypeError, match="skip_nonfinite must be True or False"):
        optimizer.step([np.ones(3, np.float32)], skip_nonfinite=value)
    with pytest.raises(TypeError, match="error_if_nonfinite must be True or False"):
        gg.clip_by_global_norm([np.ones(3, np.float32)], 1.0, error_if_nonfinite=value)
    with pytest.raises(TypeError, match="skip_nonfinite must be True or False"):
        gg.Guard(optimizer, skip_nonfinite=value)
    with pytest.raises(TypeError, match="rescaled must be True or False"):
        gg.norm_partials([np.ones(3)], rescaled=value)
    assert optimizer.step_count == 0
    optimizer.step([np.ones(3, np.float32)], skip_nonfinite=np.bool_(True))  # NumPy's bools are bools
