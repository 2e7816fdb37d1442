"""Initialisers: moments and bounds against the formulas (fixed seeds, tolerances
from the sampling error), orthogonality, gains, conv fans, LSUV, torch parity."""

import math

import numpy as np
import pytest

import gradguard as gg
from conftest import BFLOAT16
from gradguard import init


def test_gains_and_fans():
    assert init.calculate_gain("sigmoid") == 1.0 and init.calculate_gain("conv2d") == 1.0
    assert init.calculate_gain("tanh") == 5 / 3 and init.calculate_gain("relu") == math.sqrt(2)
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / 1.0001))
    assert init.calculate_gain("selu") == 0.75
    assert init.fans((64, 32, 3, 3)) == (288, 576) and init.fans((10, 20)) == (20, 10)
    with pytest.raises(ValueError):
        init.fans((5,))
    with pytest.raises(ValueError):
        init.calculate_gain("swish")


def _check_uniform(values, bound):
    assert np.abs(values).max() <= bound
    # U(-b, b): var b^2/3; the sample variance's relative standard error is ~ sqrt(0.8 / n)
    n = values.size
    assert np.var(values) == pytest.approx(bound * bound / 3, rel=6 * math.sqrt(0.8 / n))
    assert abs(np.mean(values)) < 6 * bound / math.sqrt(3 * n)


def _check_normal(values, std):
    n = values.size
    assert np.std(values) == pytest.approx(std, rel=6 / math.sqrt(2 * n))
    assert abs(np.mean(values)) < 6 * std / math.sqrt(n)


@pytest.mark.parametrize("shape", [(256, 128), (64, 32, 3, 3)])
def test_distributions_follow_the_formulas(shape):
    fan_in, fan_out = init.fans(shape)
    _check_uniform(init.xavier_uniform(shape, gain=2.0, rng=0), 2.0 * math.sqrt(6 / (fan_in + fan_out)))
    _check_normal(init.xavier_normal(shape, rng=1), math.sqrt(2 / (fan_in + fan_out)))
    _check_uniform(init.kaiming_uniform(shape, a=0.1, rng=2), math.sqrt(3) * math.sqrt(2 / 1.01) / math.sqrt(fan_in))
    _check_normal(init.kaiming_normal(shape, mode="fan_out", nonlinearity="relu", rng=3), math.sqrt(2 / fan_out))
    _check_normal(init.normal(shape, 0.0, 0.02, rng=4), 0.02)
    _check_uniform(init.uniform(shape, -0.5, 0.5, rng=5), 0.5)
    assert not init.zeros(shape).any()


def test_reproducible_and_in_place():
    a = init.kaiming_normal((30, 20), rng=7)
    b = np.empty((30, 20), np.float32)
    assert init.kaiming_normal_(b, rng=7) is b
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, init.kaiming_normal((30, 20), rng=8))
    frozen = np.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        init.normal_(frozen.reshape(2, 2))


@pytest.mark.parametrize("shape", [(50, 50), (20, 80), (80, 20), (16, 8, 3, 3)])
def test_orthogonal(shape):
    weight = init.orthogonal(shape, gain=1.5, rng=0, dtype=np.float64)
    flat = weight.reshape(shape[0], -1) / 1.5
    small = min(flat.shape)
    gram = flat @ flat.T if flat.shape[0] == small else flat.T @ flat
    np.testing.assert_allclose(gram, np.eye(small), atol=1e-12)


def test_for_activation_picks_the_scheme():
    relu = init.for_activation("relu")(np.empty((400, 300)), rng=0)
    _check_normal(relu, math.sqrt(2 / 300))
    tanh = init.for_activation("tanh")(np.empty((400, 300)), rng=1)
    _check_normal(tanh, 5 / 3 * math.sqrt(2 / 700))
    selu = init.for_activation("selu")(np.empty((400, 300)), rng=2)
    _check_normal(selu, math.sqrt(1 / 300))


def test_lsuv_reaches_unit_variance_on_a_deep_network():
    rng = np.random.default_rng(0)
    widths = [64] * 11
    weights = [np.empty((widths[i + 1], widths[i])) for i in range(10)]
    data = rng.standard_normal((512, 64))

    def layer_outputs(batch):
        outputs, hidden = [], batch
        for weight in weights:
            pre = hidden @ weight.T
            outputs.append(pre)
            hidden = np.tanh(pre)
        return outputs

    variances = gg.init.lsuv_(weights, layer_outputs, data, tol=0.1, rng=1)
    assert all(abs(v - 1.0) < 0.1 for v in variances)
    assert all(abs(np.var(out) - 1.0) < 0.1 for out in layer_outputs(data))


def test_torch_parity_of_the_distributions():
    torch = pytest.importorskip("torch")
    for shape in [(128, 64), (32, 16, 3, 3)]:
        for ours, theirs in [
            (
                lambda s: init.kaiming_uniform(s, a=math.sqrt(5), rng=0),
                lambda t: torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5)),
            ),
            (
                lambda s: init.xavier_normal(s, gain=init.calculate_gain("tanh"), rng=0),
                lambda t: torch.nn.init.xavier_normal_(t, gain=torch.nn.init.calculate_gain("tanh")),
            ),
            (
                lambda s: init.kaiming_normal(s, nonlinearity="relu", rng=0),
                lambda t: torch.nn.init.kaiming_normal_(t, nonlinearity="relu"),
            ),
        ]:
            mine = ours(shape)
            torch.manual_seed(0)
            reference = theirs(torch.empty(shape)).numpy()
            assert np.std(mine) == pytest.approx(np.std(reference), rel=0.1)
        assert torch.nn.init.calculate_gain("leaky_relu", 0.3) == pytest.approx(init.calculate_gain("leaky_relu", 0.3))
        assert torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape)) == init.fans(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_uniform_and_zeros_fill_in_place(dtype):
    array = np.full((64, 32), 7.0, dtype)
    assert init.uniform_(array, -0.5, 0.25, rng=0) is array
    assert array.min() >= -0.5 and array.max() <= 0.25 and array.std() > 0.1
    same = np.empty((64, 32), dtype)
    init.uniform_(same, -0.5, 0.25, rng=0)
    np.testing.assert_array_equal(array, same)  # the seed decides the values
    assert init.zeros_(array) is array and not array.any()


@pytest.mark.parametrize("fill", [init.zeros_, init.uniform_])
def test_in_place_initialisers_refuse_what_they_cannot_fill(fill):
    with pytest.raises(TypeError, match="floating-point"):
        fill(np.ones(4, np.int32))
    with pytest.raises(TypeError, match="floating-point"):
        fill([1.0, 2.0])
    read_only = np.ones(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fill(read_only)
    assert (read_only == 1).all()


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
