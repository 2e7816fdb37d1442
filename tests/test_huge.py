"""Arrays past 2^31 elements (64-bit indexing). float16 keeps them at 4 GiB;
np.zeros maps untouched pages to the shared zero page, so reading is cheap."""

import math

import numpy as np
import pytest

import gradguard as gg

HUGE = 2**31 + 33
pytestmark = pytest.mark.slow  # 4 GiB: not in the sanitizer pass


@pytest.fixture(scope="module")
def huge():
    try:
        values = np.zeros(HUGE, dtype=np.float16)
    except MemoryError:
        pytest.skip("not enough memory for a 4 GiB array")
    values[[0, 2**31 - 1, 2**31, HUGE - 1]] = [3.0, -4.0, 12.0, np.inf]
    return values


def test_norm_and_stats_see_elements_past_two_to_the_31(huge):
    assert gg.global_norm([huge[: HUGE - 1]]) == 13.0
    assert gg.global_norm([huge], ord=math.inf) == math.inf
    stats = gg.grad_stats([huge])
    assert stats.numel[0] == HUGE and stats.n_inf[0] == 1
    assert stats.n_zero[0] == HUGE - 4
    assert stats.max[0] == 12.0 and stats.min[0] == -4.0
    assert stats.l2[0] == 13.0


def test_in_place_clip_reaches_the_end(huge):
    huge[HUGE - 1] = 0.0
    gg.clip_by_global_norm([huge], 6.5, eps=0.0)
    assert huge[2**31] == 6.0 and huge[0] == 1.5 and huge[2**31 - 1] == -2.0
