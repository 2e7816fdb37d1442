"""How gradients are spread over ranks ("replicated", "disjoint", "sharded")
and how each layout's partials are taken and gathered."""

from __future__ import annotations

import numpy as np

from .. import _core
from .._arguments import as_array_list
from ..partials import RescaledPartialsNeeded
from .communicator import Communicator, exchange

__all__ = ["LAYOUTS", "gathered_partials", "combined"]

LAYOUTS = ("replicated", "disjoint", "sharded")


def _layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    return layout


def _share(sizes, rank, size):
    """The contiguous block of tensors rank `rank` of `size` reads, balanced by element count."""
    ends = np.cumsum(np.asarray(sizes, dtype=np.float64))
    total = ends[-1] if len(ends) else 0.0
    # tensor i goes to the rank whose share of the total holds its middle
    middles = ends - np.asarray(sizes, dtype=np.float64) / 2
    owner = np.minimum((middles * size // max(total, 1.0)).astype(np.int64), size - 1)
    return np.flatnonzero(owner == rank)


def _prepared(grads, layout, offsets, for_writing):
    """This rank's arguments, checked: (arrays, names, given offsets or None)."""
    layout = _layout(layout)
    array_list, names = as_array_list(grads, "grads")
    if for_writing:
        _core.check_writable(array_list, names, "grads")
    if layout != "sharded":
        if offsets is not None:
            raise ValueError('offsets are for layout="sharded"')
        return array_list, names, None
    if names is None:
        raise ValueError('layout="sharded" needs the shards as a dict name -> shard (tensors are matched by name)')
    if offsets is None:
        return array_list, names, None
    missing = [name for name in names if name not in offsets]
    if missing:
        raise ValueError(f"offsets has no entry for {missing[:5]}")
    return array_list, names, [int(offsets[name]) for name in names]


def gathered_partials(grads, group, layout, offsets, timeout, take, *, for_writing=False):
    """(every rank's partials in rank order, whether to combine by name).
    Everything that can fail runs inside an exchange, so it fails on every rank."""
    comm = Communicator(group, timeout)
    prepared = []

    def prepare():
        prepared.append(_prepared(grads, layout, offsets, for_writing))
        array_list, names, _ = prepared[0]
        return {name: int(np.size(array)) for name, array in zip(names or (), array_list)}

    grid = None
    if layout == "sharded" and offsets is None:
        # Shard r starts where the shards of ranks < r with the same name end.
        everyone = exchange(comm, prepare)
        names = prepared[0][1]
        grid = [sum(sizes.get(name, 0) for sizes in everyone[: comm.rank]) for name in names]

    def work():
        if not prepared:
            prepare()
        array_list, names, given = prepared[0]
        if layout == "replicated":
            sizes = [int(np.size(array)) for array in array_list]
            chosen = _share(sizes, comm.rank, comm.size)
            if names is None:
                return tuple(sizes), take([array_list[i] for i in chosen], None)
            return tuple(sizes), take({names[i]: array_list[i] for i in chosen}, None)
        source = array_list if names is None else dict(zip(names, array_list))
        return None, take(source, given if given is not None else grid)

    everyone = exchange(comm, work)
    if layout == "replicated" and len({sizes for sizes, _ in everyone}) > 1:
        raise ValueError('layout="replicated" needs the same tensors on every rank; the ranks hold different sizes')
    return [part for _, part in everyone], layout == "sharded"


def combined(grads, where, take, combine, for_writing=False):
    """combine(parts, by_name) of every rank's partials, take(arrays, offsets, rescaled).
    Every rank sees the same partials, so when the plain ones cannot be combined
    (the rare overflow-safe path) every rank takes the rescaled ones together."""
    for rescaled in (False, True):
        parts, by_name = gathered_partials(
            grads, *where, lambda arrays, grid, rescaled=rescaled: take(arrays, grid, rescaled), for_writing=for_writing
        )
        try:
            return combine(parts, by_name)
        except RescaledPartialsNeeded:
            continue
    raise AssertionError("rescaled partials always combine")
