"""Turning what users pass into what the core takes, and checking scalars.

The per-array checks (type, dtype, contiguity, writability) happen in the C++
boundary, which names the offending array; this module only flattens the
containers and validates scalar arguments.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np


def as_array_list(arrays, argument="arrays"):
    """(list of arrays, list of names or None) from a list, tuple, dict, iterable or one array."""
    if isinstance(arrays, np.ndarray):
        return [arrays], None
    if isinstance(arrays, Mapping):
        return list(arrays.values()), [str(name) for name in arrays.keys()]
    if isinstance(arrays, list):
        return arrays, None
    if isinstance(arrays, (str, bytes)) or not hasattr(arrays, "__iter__"):
        raise TypeError(f"{argument} must be a list, tuple or dict of NumPy arrays, got {type(arrays).__name__}")
    return list(arrays), None


def name_of(index, names, argument="arrays"):
    """'arrays[3]' or "arrays[3] ('layer.weight')" for messages and reports."""
    if names is None:
        return f"{argument}[{index}]"
    return f"{argument}[{index}] ({names[index]!r})"


def norm_order(ord):
    """ord as a float: 2, 1, inf or any p > 0 ('inf' and 'fro' accepted as in torch/NumPy)."""
    if isinstance(ord, str):
        aliases = {"inf": math.inf, "fro": 2.0}
        if ord not in aliases:
            raise ValueError(f"ord must be a number p > 0, 'inf' or 'fro', got {ord!r}")
        return aliases[ord]
    try:
        value = float(ord)
    except (TypeError, ValueError):
        raise TypeError(f"ord must be a number p > 0 or inf, got {type(ord).__name__}") from None
    if not value > 0:
        raise ValueError(f"ord must be > 0 (2, 1, inf or any p > 0), got {ord!r}")
    return value


def non_negative(value, argument, allow_inf=True):
    """float(value) after checking it is a number >= 0 (and not NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a real number, got {type(value).__name__}") from None
    if math.isnan(number) or number < 0 or (not allow_inf and math.isinf(number)):
        raise ValueError(f"{argument} must be a {'finite ' if not allow_inf else ''}number >= 0, got {value!r}")
    return number


def finite_or_none(value, argument):
    """float(value), or None; NaN refused."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a real number or None, got {type(value).__name__}") from None
    if math.isnan(number):
        raise ValueError(f"{argument} must not be NaN")
    return number
