"""One-pass per-array gradient statistics: the raw material of vanishing and
exploding-gradient detection."""

from __future__ import annotations

from dataclasses import field, make_dataclass
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, as_array_list

__all__ = ["grad_stats", "GradStats"]

# The statistics' names, in the core's order: the one list (multi_tensor/stats.h).
STATS_FIELDS = _core.STATS_FIELDS


class _GradStatsBase:
    """Per-array statistics, one entry per input array (NumPy arrays of that length).

    Moments are over each array's finite entries (n_finite = numel - n_nan - n_inf):

        mean     = sum x / n_finite
        std      = sqrt(sum (x - mean)^2 / n_finite)      (population, ddof=0)
        abs_mean = sum |x| / n_finite
        l2       = sqrt(sum x^2)
        min, max over finite x

    (mean, std, abs_mean, min, max are NaN for an array with no finite entry;
    l2 is then 0.) n_nan, n_inf, n_zero count entries; numel is the size.
    global_norm is the L2 norm of everything: NaN when any NaN is present,
    otherwise inf when any inf is, otherwise sqrt(sum l2^2). names: the
    arrays' names (None for a list). ndim: each array's number of dimensions
    (None where not known: statistics combined over ranks or from JAX's
    device table); the monitor judges a vector's exact zeros apart (see its dead test).
    """

    def __len__(self):
        return len(self.numel)

    def row(self, key: Union[int, str]) -> dict:
        """The statistics of one array, by index or name, as a dict."""
        index = self.names.index(key) if isinstance(key, str) and self.names is not None else int(key)
        return {name: getattr(self, name)[index].item() for name in STATS_FIELDS}

    def nonfinite(self) -> tuple:
        """Indices (or names) of the arrays holding NaN or inf."""
        indices = np.flatnonzero((self.n_nan > 0) | (self.n_inf > 0))
        return tuple(self.names[i] for i in indices) if self.names is not None else tuple(indices.tolist())


# A frozen dataclass whose fields are the core's statistics, then names and global_norm.
GradStats = make_dataclass(
    "GradStats",
    [(name, np.ndarray) for name in STATS_FIELDS]
    + [("names", Optional[tuple]), ("global_norm", float), ("ndim", Optional[np.ndarray], field(default=None))],
    bases=(_GradStatsBase,),
    frozen=True,
)
GradStats.__module__ = __name__
GradStats.__doc__ = _GradStatsBase.__doc__


def grad_stats(arrays: Arrays) -> GradStats:
    """Statistics of every array from ONE read of memory (see GradStats for the formulas).

    Args:
        arrays: list/tuple or dict name -> array (float32, float64, float16,
            bfloat16; mixed dtypes allowed). Strided or misaligned arrays are
            read through a contiguous copy; the inputs are never modified.

    Returns:
        GradStats. Sums are float64 in a fixed order, so results do not depend
        on the number of threads. l2 = sqrt(sum x^2) from float64 squares of
        the values, summed as global_norm sums them (equal to it to ~1e-15).
        mean, std and abs_mean come from deviations about a shift,
        (x - s), (x - s)^2 and |x|, formed and summed 16 to a lane in float32,
        then in float64: within a few 1e-6 of std (mean) or relative (std,
        abs_mean) at worst, ~1e-9 in practice. Other dtypes, and float32
        pieces where that bound would not hold (inf/NaN, max|x| below 2^-40,
        a shift far from the mean), take float64 deviations (|x| still summed
        in groups in the compute type); arrays with max|x| of 2^120 or more
        (beyond 2^+-480 for float64) are recomputed entirely in float64 on
        rescaled values.
    """
    array_list, names = as_array_list(arrays)
    return stats_of(array_list, names)


def stats_of(array_list, names, argument="arrays"):
    """grad_stats of an already flattened list; errors name `argument`[i] and the name."""
    # The core's dict holds every field but names, global_norm and ndim included:
    # the monitor calls this every step, after a backward pass has swept the
    # caches, where each NumPy call here would cost tens of microseconds.
    fields = _core.grad_stats(array_list, names, argument)
    return GradStats(names=tuple(names) if names is not None else None, **fields)


def stats_from_columns(fields, names, ndim=None):
    """GradStats from columns (a device's, JAX's, combined partials'): the
    global norm by the core's rule (NaN if any n_nan, else inf if any n_inf,
    else sqrt(sum l2^2) without overflow), unless `fields` holds it already."""
    if "global_norm" not in fields:
        fields = dict(fields, global_norm=_core.stats_global_norm(fields["l2"], fields["n_nan"], fields["n_inf"]))
    return GradStats(names=tuple(names) if names is not None else None, ndim=ndim, **fields)
