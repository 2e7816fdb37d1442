"""Turning what users pass into what the core takes, and checking scalars.

The per-array checks (type, dtype, contiguity, alignment, writability,
overlap) happen in the C++ boundary, which names the offending array; this
module flattens the containers, matches dicts by name and validates scalar
arguments, once for the whole package.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Union

import numpy as np

# What every multi-array function takes: one array, a list/tuple, or a dict name -> array.
Arrays = Union[np.ndarray, Sequence[np.ndarray], Mapping[str, np.ndarray]]
# A real number argument (bool is refused at run time).
Real = Union[float, int, np.floating, np.integer]


def _is_foreign_array(value):
    """Another framework's array (jax.Array, a torch.Tensor, ...): it offers
    __array__ or DLPack but is neither a NumPy array nor a NumPy scalar."""
    if isinstance(value, (np.ndarray, np.generic, str, bytes)):
        return False
    return hasattr(value, "__array__") or hasattr(value, "__dlpack__")


def _as_numpy(value, label):
    """A foreign array as NumPy, sharing its memory where the framework allows
    (a CPU jax.Array: read-only; a CPU torch.Tensor: writable); anything else unchanged."""
    if not _is_foreign_array(value):
        return value
    if type(value).__module__.partition(".")[0] == "torch":
        if type(value).__name__ == "Parameter":  # its values are the weights, not the gradient
            raise TypeError(
                f"{label} is a torch Parameter: gradguard's functions take gradients (p.grad); "
                "gradguard.torch.clip_grad_norm_(parameters, ...) and gradguard.distributed take parameters"
            )
        # torch is imported already (this is its tensor): its view handles bfloat16, requires_grad
        # and says clearly what to do with a tensor on another device.
        from .torch._tensors import as_numpy as torch_as_numpy

        try:
            return torch_as_numpy(value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{label}: {error}") from None
    try:
        return np.asarray(value)
    except Exception as error:  # noqa: BLE001 - each framework raises its own type
        raise TypeError(
            f"{label} ({type(value).__name__}) cannot be read as a NumPy array on the CPU: {error}"
        ) from None


def as_array_list(arrays, argument="arrays"):
    """(list of arrays, list of names or None) from a list, tuple, dict, iterable or one array.

    The list is always a new one: the caller's container may change while the
    call runs (or, for an optimiser, between steps) without affecting it.
    Other frameworks' arrays (jax.Array, torch.Tensor) are taken through
    np.asarray, which shares their memory on the CPU; None entries stay None.
    """
    # A plain list or tuple, the common case, first: the general checks below
    # (an ABC's isinstance, hasattr) cost tens of microseconds when a training
    # step has swept the caches, as much as the statistics of a small model.
    if type(arrays) is list or type(arrays) is tuple:
        return _numpy_values(list(arrays), lambda index: f"{argument}[{index}]"), None
    if isinstance(arrays, np.ndarray):
        return [arrays], None
    if _is_foreign_array(arrays):
        return [_as_numpy(arrays, argument)], None
    # The snapshot is taken in one step (list() of a list or dict runs without
    # releasing the GIL), so another thread clearing the container cannot cut it short.
    if isinstance(arrays, Mapping):
        names, values = list(arrays.keys()), list(arrays.values())
        if len(names) != len(values):  # changed between the two snapshots: take one consistent copy
            items = list(arrays.items())
            names, values = [name for name, _ in items], [value for _, value in items]
        names = [str(name) for name in names]
        if len(set(names)) != len(names):
            raise ValueError(f"{argument} has keys that are equal as strings: {duplicates(names)}")
        return _numpy_values(values, lambda index: f"{argument}[{names[index]!r}]"), names
    if isinstance(arrays, (str, bytes)) or not hasattr(arrays, "__iter__"):
        raise TypeError(f"{argument} must be a list, tuple or dict of NumPy arrays, got {type(arrays).__name__}")
    snapshot = list(arrays)
    return _numpy_values(snapshot, lambda index: f"{argument}[{index}]"), None


def duplicates(names) -> list:
    """The names that occur more than once, in order of first appearance."""
    seen, repeated = set(), []
    for name in names:
        if name in seen and name not in repeated:
            repeated.append(name)
        seen.add(name)
    return repeated


def _numpy_values(values, label_of):
    """values with foreign arrays taken as NumPy; the list itself when all are
    NumPy arrays already (the common case, checked at C speed: ~10 ns an array)."""
    if list(map(type, values)).count(np.ndarray) == len(values):
        return values
    return [_as_numpy(value, label_of(index)) for index, value in enumerate(values)]


def in_order_of(expected, array_list, names, argument="grads"):
    """array_list reordered to follow the names in `expected`, when both sides are named.

    When `expected` or `names` is None the lists pair by position. With names
    on both sides, the key sets must be equal: a ValueError lists the missing
    and the unexpected names.
    """
    if expected is None or names is None:
        return array_list
    if names == expected:
        return array_list
    position = {name: index for index, name in enumerate(names)}
    wanted = set(expected)
    missing = [name for name in expected if name not in position]
    unexpected = [name for name in names if name not in wanted]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        raise ValueError(f"{argument} are matched by name and do not match the names expected: {'; '.join(parts)}")
    return [array_list[position[name]] for name in expected]


def name_of(index, names, argument="arrays"):
    """'arrays[3]' or "arrays[3] ('layer.weight')" for messages and reports."""
    if names is None:
        return f"{argument}[{index}]"
    return f"{argument}[{index}] ({names[index]!r})"


def _plain_number(value, argument, allow_none):
    """A real number of any kind (NumPy scalar or 0-d array, 0-d tensor) as a
    Python number; TypeError for bool, str and anything else."""
    if (
        not isinstance(value, (numbers.Real, np.ndarray))
        and getattr(value, "ndim", None) == 0
        and hasattr(value, "item")
    ):
        value = value.item()  # a 0-d tensor (torch, JAX), as torch.optim takes lr=torch.tensor(1e-3)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.ndarray)):
        kind = "a real number or None" if allow_none else "a real number"
        raise TypeError(f"{argument} must be {kind}, got {type(value).__name__}")
    if isinstance(value, np.ndarray):
        if value.ndim != 0 or value.dtype.kind not in "iuf":
            raise TypeError(
                f"{argument} must be a real number, got an array of shape {value.shape} and dtype {value.dtype}"
            )
        value = value.item()
    return value


def real(
    value,
    argument,
    *,
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    allow_inf=True,
    allow_none=False,
    allow_nan=False,
):
    """value as a float after checking it is a real number in the given interval.

    bool and str are refused with TypeError (``True`` is not a norm bound, and
    ``'1'`` is a mistake, not a number). An integer too large for a float is
    +-inf. NaN is refused unless allow_nan (a loss may be NaN: that is news,
    not a mistake); inf only with allow_inf.
    """
    if value is None and allow_none:
        return None
    # A Python float or int (not bool), the common case, skips _plain_number:
    # its ABC isinstance checks cost tens of microseconds once a training step
    # has swept the caches.
    if type(value) is not float and type(value) is not int:
        value = _plain_number(value, argument, allow_none)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if math.isnan(number):
        if allow_nan:
            return number
        raise ValueError(f"{argument} must not be NaN")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above or (math.isinf(number) and not allow_inf):
        lower = "-inf" if low is None else f"{low:g}"
        upper = "inf" if high is None else f"{high:g}"
        interval = (
            f"{'(' if low_open or low is None else '['}{lower}, {upper}{')' if high_open or high is None else ']'}"
        )
        finite = "a finite number" if not allow_inf else "a number"
        raise ValueError(f"{argument} must be {finite} in {interval}, got {value!r}")
    return number


def non_negative(value, argument, allow_inf=True):
    """float(value) after checking it is a number >= 0 (and not NaN)."""
    return real(value, argument, low=0.0, allow_inf=allow_inf)


def positive_int(value, argument, minimum=1):
    """value as an int >= minimum; bool and floats refused."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    return int(value)


def boolean(value, argument):
    """value as a bool: True/False or NumPy's (a string such as 'no', a number or None is refused)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be True or False, got {value!r}")
    return bool(value)


def state_entries(state, what, required, optional=()) -> dict:
    """The entries of a state dict given to `what`.load_state_dict, checked to
    be a mapping with every required key and no key outside required + optional
    (a ValueError names the missing and the unexpected keys); optional keys absent are None."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{what}.load_state_dict takes the dict its state_dict() returns, not {type(state).__name__}")
    missing = [key for key in required if key not in state]
    unexpected = [key for key in state if key not in required and key not in optional]
    if missing or unexpected:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
        raise ValueError(f"{what} state_dict: {'; '.join(parts)} (expected {list(required)})")
    return {key: state.get(key) for key in (*required, *optional)}


def norm_order(ord):
    """ord as a float: 2, 1, inf or any p > 0 ('inf' and 'fro' accepted as in torch/NumPy)."""
    if isinstance(ord, str):
        aliases = {"inf": math.inf, "fro": 2.0}
        if ord not in aliases:
            raise ValueError(f"ord must be a number p > 0, 'inf' or 'fro', got {ord!r}")
        return aliases[ord]
    return real(ord, "ord", low=0.0, low_open=True)


def finite_or_none(value, argument):
    """float(value), or None; NaN refused."""
    return real(value, argument, allow_none=True)
