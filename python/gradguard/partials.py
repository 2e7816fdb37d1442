"""Mergeable partial results, for gradients split across processes.

When gradients are sharded over ranks, each rank takes the partials of the
tensors it holds and the partials are gathered and combined in the global
order of the tensors (rank order for disjoint tensors), never summed by a
floating-point all-reduce: a tensor's partial depends on that tensor alone,
not on the list it came in or the thread count, so the combination is
bit-identical to gg.global_norm over all the tensors in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, norm_order

__all__ = ["NormPartials", "norm_partials", "combine_norm_partials", "RescaledPartialsNeeded"]

_FIELDS = ("power_sum", "max_abs", "has_nan", "has_inf", "needs_rescaling", "scale", "scaled_sum")


class RescaledPartialsNeeded(ValueError):
    """The combined sum over- or underflowed float64 (values beyond ~1e±154, or a
    large p): take the partials again with rescaled=True and combine those."""


@dataclass(frozen=True)
class NormPartials:
    """Per tensor, in order: power_sum = sum |x|^p (max |x| for p = inf),
    max_abs, has_nan, has_inf, needs_rescaling (the unscaled sum lost digits);
    with rescaled, scale s_t ~ 1/max|x| and scaled_sum = sum (|x| s_t)^p too."""

    ord: float
    names: Optional[tuple]
    rescaled: bool
    power_sum: np.ndarray
    max_abs: np.ndarray
    has_nan: np.ndarray
    has_inf: np.ndarray
    needs_rescaling: np.ndarray
    scale: np.ndarray
    scaled_sum: np.ndarray

    def __len__(self):
        return len(self.power_sum)


def norm_partials(arrays: Arrays, ord: Union[Real, str] = 2.0, *, rescaled: bool = False) -> NormPartials:
    """The partials of gg.global_norm(arrays, ord), one per array, to combine with
    those of the other ranks (combine_norm_partials). rescaled=True also takes
    the scaled sums the rare overflow/underflow path needs (two more passes)."""
    order = norm_order(ord)
    array_list, names = as_array_list(arrays)
    fields = _core.norm_partials(array_list, order, names, bool(rescaled))
    return NormPartials(
        order, tuple(names) if names is not None else None, bool(rescaled), **{key: fields[key] for key in _FIELDS}
    )


def combine_norm_partials(parts: Sequence[NormPartials]) -> float:
    """gg.global_norm of all the tensors behind `parts`, taken in the order given
    (ranks in rank order, each with its tensors in order), bit for bit:

        total = (sum_t power_sum_t)^(1/p)      (max_t max_abs_t for p = inf;
                                                NaN anywhere: NaN, else inf anywhere: inf)

    with the rescaled form sum_t (s_c / s_t)^p S_t when the plain sum over- or
    underflows; that needs partials taken with rescaled=True, and
    RescaledPartialsNeeded says so otherwise."""
    parts = list(parts)
    if not all(isinstance(part, NormPartials) for part in parts):
        raise TypeError("parts must be NormPartials (from gg.norm_partials)")
    orders = {part.ord for part in parts}
    if len(orders) > 1:
        raise ValueError(f"the partials were taken with different ord: {sorted(orders)}")
    if not parts:
        return 0.0
    joined = {key: np.concatenate([getattr(part, key) for part in parts]) for key in _FIELDS}
    rescaled = np.concatenate([np.full(len(part), part.rescaled) for part in parts])
    total, needs_rescaled, _, _ = _core.combine_norm_partials(
        joined["power_sum"],
        joined["max_abs"],
        joined["has_nan"],
        joined["has_inf"],
        joined["needs_rescaling"],
        rescaled,
        joined["scale"],
        joined["scaled_sum"],
        orders.pop(),
    )
    if needs_rescaled:
        raise RescaledPartialsNeeded(
            "the global sum over- or underflowed float64: take the partials with rescaled=True on every rank"
        )
    return total
