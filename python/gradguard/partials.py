"""Mergeable partial results, for gradients spread over processes.

Every tensor is read in pieces of PIECE_ELEMENTS elements, cut at fixed
multiples within the tensor, and gg.global_norm / gg.grad_stats are two steps:
a partial per piece, then a fold of each tensor's pieces in order and of the
tensors in order. The partial functions here are the first step, the combine
functions the second, so partials taken on several ranks, gathered and
combined give the single-process result bit for bit:

- whole tensors spread over ranks (pipeline or tensor parallel, or replicated
  tensors split for the work): combine in the tensors' global order;
- shards of one tensor (ZeRO / FSDP): give each shard's element offset within
  its tensor (`offsets`) and combine by name. The result is bit-identical when
  every shard boundary is a multiple of PIECE_ELEMENTS (shard_bounds cuts
  them so); elsewhere the piece across a boundary is summed in two parts, which
  agrees to float64 rounding.

Combining is a fold in a fixed order, never a floating-point all-reduce, so
the result does not depend on the rank count, the thread count or the arrival
order of the partials.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, boolean, norm_order, positive_int
from .stats import GradStats, stats_from_columns

__all__ = [
    "PIECE_ELEMENTS",
    "NormPartials",
    "StatsPartials",
    "norm_partials",
    "stats_partials",
    "combine_norm_partials",
    "combine_stats_partials",
    "shard_bounds",
    "RescaledPartialsNeeded",
]

PIECE_ELEMENTS = _core.PIECE_ELEMENTS
# The columns of each kind of partial's row, as the core defines them.
_NORM_COLUMN = {name: index for index, name in enumerate(_core.NORM_PARTIAL_FIELDS)}
_STATS_COLUMN = {name: index for index, name in enumerate(_core.STATS_PARTIAL_FIELDS)}


class RescaledPartialsNeeded(ValueError):
    """The combination needs the rare path's scaled sums (values beyond ~1e+-154
    in float64, or a large p; statistics of values beyond 2^+-120 or that cancel):
    take the partials again with rescaled=True on every rank and combine those."""


@dataclass(frozen=True)
class _Partials:
    """Piece partials of a list of arrays: piece i belongs to array tensor[i]
    and starts at element offset[i] of the whole tensor; values[i] holds its
    fields (a float64 row, opaque: pass it to a combine function)."""

    names: Optional[tuple]
    sizes: np.ndarray
    rescaled: bool
    tensor: np.ndarray
    offset: np.ndarray
    values: np.ndarray
    numel: Optional[np.ndarray] = None  # per array, the element count of the whole tensor it is part of (None: sizes)

    @property
    def whole_sizes(self) -> np.ndarray:
        """Per array, the element count of the whole tensor it is a shard of (its own size when whole)."""
        return self.sizes if self.numel is None else self.numel

    def __len__(self):
        return len(self.sizes)


@dataclass(frozen=True)
class NormPartials(_Partials):
    """gg.norm_partials's result: per piece sum |x|^p (max |x| for p = inf), its
    largest |x| and, with rescaled, the scaled sum sum (|x| s)^p."""

    ord: float = 2.0

    @property
    def power_sum(self) -> np.ndarray:
        """Per piece, sum |x|^p (max |x| for p = inf; NaN when the piece holds NaN)."""
        return self.values[:, _NORM_COLUMN["power_sum"]]

    @property
    def max_abs(self) -> np.ndarray:
        """Per piece, max |x| (exact with rescaled; otherwise as far as the fast pass tracked it)."""
        return self.values[:, _NORM_COLUMN["max_abs" if self.rescaled else "fast_max_abs"]]


@dataclass(frozen=True)
class StatsPartials(_Partials):
    """gg.stats_partials's result: per piece the count, finite / NaN / zero
    counts, sum and sum of squares about a shift (merged with Chan et al.'s
    formula), sum |x|, min and max; with rescaled, the same in float64 on
    values scaled by a power of two. The properties read them per piece."""

    def _column(self, name):
        return self.values[:, _STATS_COLUMN[name]]

    @property
    def count(self) -> np.ndarray:
        return self._column("count").astype(np.int64)

    @property
    def n_finite(self) -> np.ndarray:
        return self._column("finite").astype(np.int64)

    @property
    def n_nan(self) -> np.ndarray:
        return self._column("nan").astype(np.int64)

    @property
    def n_inf(self) -> np.ndarray:
        return self.count - self.n_finite - self.n_nan

    @property
    def n_zero(self) -> np.ndarray:
        return self._column("zero").astype(np.int64)

    @property
    def sum(self) -> np.ndarray:
        """Per piece, sum of the finite x: n shift + sum (x - shift)."""
        return self._column("finite") * self._column("shift") + self._column("shifted_sum")

    @property
    def m2(self) -> np.ndarray:
        """Per piece, sum (x - mean)^2 over the finite x: sum (x - shift)^2 - (sum (x - shift))^2 / n."""
        finite = np.maximum(self._column("finite"), 1)
        return np.maximum(self._column("shifted_sumsq") - self._column("shifted_sum") ** 2 / finite, 0.0)

    @property
    def abs_sum(self) -> np.ndarray:
        return self._column("abs_sum")

    @property
    def min(self) -> np.ndarray:
        """Per piece, the smallest finite x (+inf when none)."""
        return self._column("min")

    @property
    def max(self) -> np.ndarray:
        """Per piece, the largest finite x (-inf when none)."""
        return self._column("max")


def _taken(arrays, offsets, numel, take):
    """The fields of a partials object: names, sizes, tensor, offset, values (of
    take(array_list, names, grid offsets)) and numel, every argument checked first."""
    array_list, names = as_array_list(arrays)
    grid = [] if offsets is None else shard_offsets(offsets, array_list)
    sizes = np.array([np.size(array) for array in array_list], dtype=np.int64)
    whole = None
    if offsets is not None or numel is not None:
        if offsets is None or numel is None:
            raise ValueError(
                "offsets and numel go together: where each shard starts and how many elements its whole tensor has "
                "(so that combining finds a missing shard, the last one included)"
            )
        whole = np.array(shard_offsets(numel, array_list, argument="numel"), dtype=np.int64)
        beyond = np.flatnonzero(np.asarray(grid, dtype=np.int64) + sizes > whole)
        if len(beyond):
            index = int(beyond[0])
            raise ValueError(
                f"offsets[{index}] + the shard's {sizes[index]} elements run past numel[{index}] = {whole[index]}"
            )
    tensor, offset, values = take(array_list, names, grid)
    return dict(
        names=tuple(names) if names is not None else None,
        sizes=sizes,
        tensor=tensor,
        offset=offset,
        values=values,
        numel=whole,
    )


# A shard must end at or below 2^62 elements: the core adds offsets to element
# counts in int64, and this leaves room for any sum it forms (the core's limit).
_MAX_ELEMENT = _core.MAX_SHARD_END


def shard_offsets(offsets, array_list, argument="offsets") -> list:
    """offsets (or numel: argument) as a list of ints, one per array, each a
    whole number >= 0 (not a bool, a float or a string) whose shard ends below 2^62."""
    if isinstance(offsets, (str, bytes, dict)) or not hasattr(offsets, "__iter__"):
        raise TypeError(f"{argument} must be a list of ints, one per array, not {type(offsets).__name__}")
    offsets = list(offsets)
    if len(offsets) != len(array_list):
        raise ValueError(f"{argument} has {len(offsets)} entries for {len(array_list)} arrays")
    checked = []
    for index, (value, array) in enumerate(zip(offsets, array_list)):
        value = positive_int(value, f"{argument}[{index}]", minimum=0)
        if value + int(np.size(array)) > _MAX_ELEMENT:
            raise ValueError(f"{argument}[{index}] = {value} puts the shard's end beyond 2^62 elements")
        checked.append(value)
    return checked


def norm_partials(
    arrays: Arrays,
    ord: Union[Real, str] = 2.0,
    *,
    rescaled: bool = False,
    offsets: Optional[Sequence[int]] = None,
    numel: Optional[Sequence[int]] = None,
) -> NormPartials:
    """The piece partials of gg.global_norm(arrays, ord), to combine with other
    ranks' (combine_norm_partials). offsets, numel: for shards of tensors
    (ZeRO, FSDP), where each array starts within its whole tensor and how many
    elements that tensor has (default: whole tensors), so that a combination
    by name finds a shard missing anywhere, the last one included. rescaled=True
    also takes the scaled sums the rare overflow/underflow path needs (two more passes)."""
    order = norm_order(ord)
    rescaled = boolean(rescaled, "rescaled")
    taken = _taken(
        arrays,
        offsets,
        numel,
        lambda array_list, names, grid: _core.norm_partials(array_list, order, names, rescaled, grid),
    )
    return NormPartials(rescaled=rescaled, ord=order, **taken)


def stats_partials(
    arrays: Arrays,
    *,
    rescaled: bool = False,
    offsets: Optional[Sequence[int]] = None,
    numel: Optional[Sequence[int]] = None,
) -> StatsPartials:
    """The piece partials of gg.grad_stats(arrays), to combine with other ranks'
    (combine_stats_partials). offsets, numel and rescaled as for norm_partials
    (the scaled pass is one more read)."""
    rescaled = boolean(rescaled, "rescaled")
    taken = _taken(
        arrays,
        offsets,
        numel,
        lambda array_list, names, grid: _core.stats_partials(array_list, names, rescaled, grid),
    )
    return StatsPartials(rescaled=rescaled, **taken)


def _gathered(parts, kind, by_name):
    """All pieces in one table sorted by (global tensor, offset), the global
    tensors' keys (names, or indices in order) and the parts. The core checks
    the table (counts, tiling) before it combines."""
    parts = list(parts)
    if not all(isinstance(part, kind) for part in parts):
        raise TypeError(f"parts must be {kind.__name__} (from gg.{kind.__name__.replace('P', '_p', 1).lower()})")
    width = len(_core.NORM_PARTIAL_FIELDS if kind is NormPartials else _core.STATS_PARTIAL_FIELDS)
    for part in parts:
        tensor, offset, values = (np.asarray(part.tensor), np.asarray(part.offset), np.asarray(part.values))
        if values.ndim != 2 or values.shape[1] != width or not (tensor.shape == offset.shape == (len(values),)):
            raise ValueError(
                f"partials: a table of {values.shape} values, {width} fields per piece expected (altered?)"
            )
        if len(tensor) and (tensor.min() < 0 or tensor.max() >= len(part)):
            raise ValueError("partials: a piece names a tensor the partials do not hold (the partials were altered?)")
    if by_name:
        if any(part.names is None for part in parts):
            raise ValueError("by_name needs partials taken from dicts name -> array")
        keys = list(dict.fromkeys(name for part in parts for name in part.names))
        index_of = {name: index for index, name in enumerate(keys)}
        mapped = [np.array([index_of[name] for name in part.names], dtype=np.int64) for part in parts]
        tensors = np.concatenate([mapped[i][part.tensor] for i, part in enumerate(parts)] or [np.zeros(0, np.int64)])
        count = _NORM_COLUMN["count"] if kind is NormPartials else _STATS_COLUMN["count"]
        _check_whole(parts, mapped, keys, tensors, count)
    else:
        names = [part.names for part in parts]
        starts = np.cumsum([0] + [len(part) for part in parts])
        keys = (
            [name for part in names for name in part]
            if parts and all(part is not None for part in names)
            else list(range(int(starts[-1])))
        )
        tensors = np.concatenate([part.tensor + starts[i] for i, part in enumerate(parts)] or [np.zeros(0, np.int64)])
    offsets = np.concatenate([part.offset for part in parts] or [np.zeros(0, np.int64)])
    values = np.concatenate([part.values for part in parts] or [np.zeros((0, width))])
    order = np.lexsort((offsets, tensors))
    return tensors[order], offsets[order], values[order], keys, parts


def _check_whole(parts, mapped, keys, tensors, count_column):
    """Shards combined by name must make whole tensors: every shard of a name
    agrees on the tensor's element count, and its pieces hold that many (the
    core then checks that they tile it without gap or overlap)."""
    whole = np.full(len(keys), -1, dtype=np.int64)
    for part, indices in zip(parts, mapped):
        sizes = np.asarray(part.whole_sizes, dtype=np.int64)
        if sizes.shape != indices.shape:
            raise ValueError("partials: numel does not hold one count per array (the partials were altered?)")
        for key, size in zip(indices.tolist(), sizes.tolist()):
            if whole[key] not in (-1, size):
                raise ValueError(
                    f"the shards of tensor {keys[key]!r} disagree on its size: {whole[key]} and {size} elements"
                )
            whole[key] = size
    counts = np.concatenate([np.asarray(part.values)[:, count_column] for part in parts] or [np.zeros(0)])
    held = np.bincount(tensors, weights=counts, minlength=len(keys))
    short = np.flatnonzero(held != whole)
    if len(short):
        key = int(short[0])
        raise ValueError(
            f"the shards of tensor {keys[key]!r} hold {int(held[key])} of its {int(whole[key])} elements "
            "(a shard missing, counted twice, or given the wrong offset)"
        )


def combine_norm_partials(parts: Sequence[NormPartials], *, by_name: bool = False) -> float:
    """gg.global_norm of all the tensors behind `parts`, bit for bit:

        total = (sum_t sum_pieces power_sum)^(1/p)    (max for p = inf;
                                                       NaN anywhere: NaN, else inf anywhere: inf)

    folded in the order of the tensors (the parts' order, each with its arrays
    in order; by_name=True: shards with the same name are one tensor, ordered
    by offset, tensors in order of first appearance), with the rescaled form
    sum_t (s_c / s_t)^p S_t when the plain sum over- or underflows;
    RescaledPartialsNeeded when that needs partials taken with rescaled=True."""
    return combine_norm_details(parts, by_name=by_name)[0]


def combine_norm_details(parts, *, by_name=False):
    """(total, per-tensor norms, keys of the non-finite tensors, keys) of combine_norm_partials."""
    tensors, offsets, values, keys, parts = _gathered(parts, NormPartials, by_name)
    orders = {part.ord for part in parts}
    if len(orders) > 1:
        raise ValueError(f"the partials were taken with different ord: {sorted(orders)}")
    # the ord travels with the partials: checked like an argument (altered partials are refused)
    order = norm_order(orders.pop()) if orders else 2.0
    total, needs_rescaled, nonfinite, per_tensor = _core.combine_norm_partials(tensors, offsets, values, keys, order)
    if needs_rescaled:
        raise RescaledPartialsNeeded(
            "the global sum over- or underflowed float64: take the partials with rescaled=True on every rank"
        )
    return total, per_tensor, tuple(keys[index] for index in nonfinite), keys


def combine_stats_partials(parts: Sequence[StatsPartials], *, by_name: bool = False) -> GradStats:
    """gg.grad_stats of all the tensors behind `parts`, bit for bit (order and
    by_name as for combine_norm_partials). Each tensor's pieces are merged in
    offset order with Chan et al.'s formula

        n = n_a + n_b,  mean = mean_a + d n_b / n,  M2 = M2_a + M2_b + d^2 n_a n_b / n,
        d = mean_b - mean_a,

    sums, counts, min and max as sums, counts, min and max.
    RescaledPartialsNeeded when a tensor needs the rare rescaled pass."""
    tensors, offsets, values, keys, _ = _gathered(parts, StatsPartials, by_name)
    columns = _core.combine_stats_partials(tensors, offsets, values, keys)
    if columns is None:
        raise RescaledPartialsNeeded(
            "a tensor's statistics need the rescaled pass (magnitudes beyond 2^+-120, or cancellation): "
            "take the partials with rescaled=True on every rank"
        )
    names = keys if (by_name or (parts and all(part.names is not None for part in parts))) else None
    return stats_from_columns(columns, names)


def shard_bounds(numel: int, world_size: int) -> list:
    """[(start, stop)] for world_size shards of a tensor of numel elements, each
    boundary on the piece grid (a multiple of PIECE_ELEMENTS), the pieces
    dealt as evenly as they go: shards cut so combine by name is bit-identical."""
    numel = positive_int(numel, "numel", minimum=0)
    world_size = positive_int(world_size, "world_size", minimum=1)
    pieces = -(-numel // PIECE_ELEMENTS)
    bounds = [min(numel, (pieces * rank // world_size) * PIECE_ELEMENTS) for rank in range(world_size + 1)]
    bounds[-1] = numel
    return list(zip(bounds[:-1], bounds[1:]))
