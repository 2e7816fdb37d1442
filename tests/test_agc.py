"""AGC against the reference (NumPy transcriptions of timm's and Optax's rules); the torch adapter."""

import numpy as np
import pytest

import gradguard as gg
from conftest import misaligned
from gradguard import reference

SHAPES = [(16, 8, 3, 3), (40, 30), (7,), (5, 4, 3), (1,), (300, 2), (1, 7), (1, 1, 1, 6), (3, 3, 4, 8)]


@pytest.mark.parametrize("unit_axis", ["first", "last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_agc_matches_reference(simd_target, unit_axis, dtype):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    # gradient scales spread around the limit: some units clipped, some not
    grads = [(rng.standard_normal(s) * rng.choice([1e-3, 0.05], size=s)).astype(dtype) for s in SHAPES]
    expected = reference.agc(params, grads, 0.02, 1e-3, unit_axis)
    fractions = gg.agc(params, grads, clipping=0.02, unit_axis=unit_axis)
    for grad, wanted in zip(grads, expected):
        np.testing.assert_allclose(grad, wanted, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-12)
    assert ((fractions > 0) & (fractions <= 1)).any() and fractions.shape == (len(SHAPES),)


def test_agc_zero_weights_use_eps_and_validation():
    params = [np.zeros((3, 4), np.float32)]
    grads = [np.ones((3, 4), np.float32)]
    gg.agc(params, grads, clipping=0.1, eps=1e-3)
    np.testing.assert_allclose(np.linalg.norm(grads[0], axis=1), 1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unit_axis"):
        gg.agc(params, grads, unit_axis="middle")
    with pytest.raises(ValueError, match="shape"):
        gg.agc(params, [np.ones((4, 3), np.float32)])
    frozen = np.ones((3, 4), np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gg.agc(params, [frozen])


def test_agc_refuses_before_scaling_any_gradient():
    params = [np.ones((4, 4), np.float32), np.ones((4, 4), np.float32)]
    good = np.full((4, 4), 10.0, np.float32)
    bad = misaligned(np.full((4, 4), 10.0))
    with pytest.raises(ValueError, match=r"grads\[1\] is not aligned"):
        gg.agc(params, [good, bad])
    assert (good == 10).all() and (bad == 10).all()


@pytest.mark.parametrize("shape", [(1, 7), (1, 1, 1, 6)])
def test_agc_last_treats_squeezed_vectors_as_one_unit(shape):
    weights = np.ones(shape, np.float32)
    grads = np.zeros(shape, np.float32)
    grads.reshape(-1)[0] = 1.0
    gg.agc([weights], [grads], clipping=0.5, unit_axis="last")
    assert grads.reshape(-1)[0] == 1.0  # ||G|| = 1 < 0.5 * sqrt(n): Optax leaves it
