"""Weight initialisers with torch.nn.init's formulas and layout (out, in, *kernel).

Trailing-underscore functions fill an array in place; the others return a new
array of a given shape. Every function takes `rng`: None (fresh entropy), an
int seed or a numpy.random.Generator, so results are reproducible.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

__all__ = [
    "calculate_gain",
    "fans",
    "uniform_",
    "normal_",
    "zeros_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "uniform",
    "normal",
    "zeros",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "for_activation",
    "lsuv_",
]

_LINEAR = {
    "linear",
    "identity",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
}


def _generator(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def calculate_gain(nonlinearity, param=None):
    """The recommended gain for a nonlinearity (torch.nn.init.calculate_gain):
    linear, conv and sigmoid 1; tanh 5/3; relu sqrt(2); leaky_relu sqrt(2 / (1 + a^2))
    with a = param (default 0.01; an int or float, not a bool); selu 3/4.
    Unknown names and invalid slopes raise ValueError, as in torch."""
    name = str(nonlinearity).lower()
    if name in _LINEAR:
        return 1.0
    if name == "tanh":
        return 5.0 / 3.0
    if name == "relu":
        return math.sqrt(2.0)
    if name == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (bool, np.bool_)) or not isinstance(param, numbers.Real):
            raise ValueError(f"negative_slope {param!r} is not a valid number")
        else:
            slope = float(param)
        return math.sqrt(2.0 / (1.0 + slope * slope))
    if name == "selu":
        return 3.0 / 4.0
    raise ValueError(f"unsupported nonlinearity {nonlinearity!r}")


def fans(shape):
    """(fan_in, fan_out) for a (out, in, *kernel) shape: in * receptive field, out * receptive field."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need at least 2 dimensions, got shape {shape}")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _is_float_array(array):
    if not isinstance(array, np.ndarray):
        return False
    return array.dtype.kind == "f" or array.dtype.name == "bfloat16"  # ml_dtypes' bfloat16 is kind "V"


def _fill(array, values_of):
    """array[...] = values_of(array.shape), after checking the array is a writable floating-point one."""
    if not _is_float_array(array):
        raise TypeError("initialisers fill floating-point NumPy arrays (float16/32/64, bfloat16)")
    if not array.flags.writeable:
        raise ValueError("the array to initialise is read-only")
    array[...] = np.asarray(values_of(array.shape)).astype(array.dtype, copy=False)
    return array


def _empty_is_no_op(array, initialiser):
    """torch's rule for kaiming_*: a zero-element array is left as it is, with a warning."""
    if isinstance(array, np.ndarray) and array.size == 0:
        warnings.warn(f"{initialiser}: initializing zero-element arrays is a no-op", UserWarning, stacklevel=3)
        return True
    return False


def uniform_(array, a=0.0, b=1.0, rng=None):
    """U(a, b)."""
    return _fill(array, lambda shape: _generator(rng).uniform(a, b, shape))


def normal_(array, mean=0.0, std=1.0, rng=None):
    """N(mean, std^2)."""
    return _fill(array, lambda shape: _generator(rng).normal(mean, std, shape))


def zeros_(array):
    """0 everywhere (checked like every other initialiser: a writable floating-point array)."""
    return _fill(array, np.zeros)


def xavier_uniform_(array, gain=1.0, rng=None):
    """U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = fans(array.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(array, -bound, bound, rng)


def xavier_normal_(array, gain=1.0, rng=None):
    """N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(array.shape)
    return normal_(array, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), rng)


def _kaiming_std(shape, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(shape)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """U(-b, b), b = sqrt(3) * gain(nonlinearity, a) / sqrt(fan) (He et al. 2015)."""
    if _empty_is_no_op(array, "kaiming_uniform_"):
        return array
    bound = math.sqrt(3.0) * _kaiming_std(array.shape, a, mode, nonlinearity)
    return uniform_(array, -bound, bound, rng)


def kaiming_normal_(array, a=0.0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    """N(0, std^2), std = gain(nonlinearity, a) / sqrt(fan)."""
    if _empty_is_no_op(array, "kaiming_normal_"):
        return array
    return normal_(array, 0.0, _kaiming_std(array.shape, a, mode, nonlinearity), rng)


def orthogonal_(array, gain=1.0, rng=None):
    """A (semi-)orthogonal matrix times gain (Saxe et al. 2014), on the (out, in * kernel)
    flattening: Q from the QR of a Gaussian matrix, signs fixed by R's diagonal."""
    if array.ndim < 2:
        raise ValueError("orthogonal_ needs at least 2 dimensions")
    rows = array.shape[0]
    columns = array.size // rows
    gaussian = _generator(rng).normal(0.0, 1.0, (rows, columns))
    if rows < columns:
        gaussian = gaussian.T
    q, r = np.linalg.qr(gaussian)
    q *= np.sign(np.diag(r))
    if rows < columns:
        q = q.T
    return _fill(array, lambda shape: gain * q.reshape(shape))


def _new(filler):
    def create(shape, *args, dtype=np.float32, **kwargs):
        return filler(np.empty(shape, dtype=dtype), *args, **kwargs)

    create.__name__ = filler.__name__.rstrip("_")
    create.__doc__ = f"A new array of `shape` filled by {filler.__name__}. " + (filler.__doc__ or "")
    return create


uniform = _new(uniform_)
normal = _new(normal_)
xavier_uniform = _new(xavier_uniform_)
xavier_normal = _new(xavier_normal_)
kaiming_uniform = _new(kaiming_uniform_)
kaiming_normal = _new(kaiming_normal_)
orthogonal = _new(orthogonal_)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def for_activation(name, param=None):
    """The initialiser that suits an activation, as fill(array, rng=None):
    sigmoid, tanh, linear: xavier_normal_ with the activation's gain;
    relu, leaky_relu: kaiming_normal_ (fan_in); selu: kaiming_normal_ with the
    linear gain (LeCun normal, which SELU's self-normalisation assumes)."""
    key = str(name).lower()
    if key in ("sigmoid", "tanh", "linear", "identity"):
        gain = calculate_gain(key)
        return lambda array, rng=None: xavier_normal_(array, gain, rng)
    if key in ("relu", "leaky_relu"):
        slope = 0.0 if key == "relu" else (0.01 if param is None else float(param))
        return lambda array, rng=None: kaiming_normal_(array, slope, "fan_in", key, rng)
    if key == "selu":
        return lambda array, rng=None: kaiming_normal_(array, 0.0, "fan_in", "linear", rng)
    raise ValueError(f"no initialiser rule for activation {name!r}")


def lsuv_(weights, layer_outputs, data, tol=0.1, max_iterations=10, orthogonal_start=True, rng=None):
    """Layer-sequential unit-variance initialisation (Mishkin & Matas, 2016), in place.

    weights: the layers' weight arrays, first layer first. layer_outputs(data)
    must return each layer's output (pre-activation) for the batch, computed
    with the current weights. Starting from orthogonal weights (unless
    orthogonal_start=False), each layer in turn is divided by the standard
    deviation of its output until |var - 1| < tol, at most max_iterations times.
    Returns the final output variance of each layer.
    """
    generator = _generator(rng)
    if orthogonal_start:
        for weight in weights:
            orthogonal_(weight, 1.0, generator)
    variances = []
    for index, weight in enumerate(weights):
        variance = float(np.var(layer_outputs(data)[index]))
        for _ in range(max_iterations):
            if abs(variance - 1.0) < tol or variance == 0.0 or not math.isfinite(variance):
                break
            weight /= math.sqrt(variance)
            variance = float(np.var(layer_outputs(data)[index]))
        variances.append(variance)
    return variances
