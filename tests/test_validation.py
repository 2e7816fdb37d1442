"""Bad input: a clear exception naming the argument, and nothing written."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16


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
