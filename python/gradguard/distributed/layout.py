"""How gradients are spread over ranks ("replicated", "disjoint", "sharded")
and how each layout's partials are taken and gathered."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import _core
from .._arguments import as_array_list
from ..partials import RescaledPartialsNeeded, shard_offsets
from .communicator import Communicator, exchange
from .device_rows import on_device

__all__ = ["LAYOUTS", "Call", "combined"]

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


def _gradient_of(value):
    """A torch parameter is read as its .grad (None when it has none), as torch's clip takes parameters."""
    return value.grad if type(value).__name__ == "Parameter" and hasattr(value, "grad") else value


def _snapshot(grads):
    """The caller's container, read once (a generator too), parameters as their gradients."""
    if isinstance(grads, Mapping):
        return {key: _gradient_of(value) for key, value in grads.items()}
    if isinstance(grads, np.ndarray) or isinstance(grads, (str, bytes)) or not hasattr(grads, "__iter__"):
        return _gradient_of(grads)
    if hasattr(grads, "__array__") or hasattr(grads, "__dlpack__"):  # one foreign array (a tensor)
        return _gradient_of(grads)
    return [_gradient_of(value) for value in grads]


def _listed(taken):
    """(tensors, names or None) of device gradients, kept as tensors (as_array_list's rules otherwise)."""
    if isinstance(taken, Mapping):
        return list(taken.values()), [str(name) for name in taken]
    return (list(taken) if isinstance(taken, list) else [taken]), None


def _numel(array) -> int:
    return int(array.numel()) if hasattr(array, "numel") else int(np.size(array))


def _prepared(grads, layout, offsets, for_writing):
    """This rank's arguments, checked: (arrays, names, given offsets or None, the
    snapshot). Entries that are None (a parameter without a gradient) are left
    out of the arrays, as torch's clip leaves them out; the snapshot keeps
    them, for an optimiser that skips their parameters."""
    layout = _layout(layout)
    taken = _snapshot(grads)
    device = on_device(taken.values() if isinstance(taken, Mapping) else taken if isinstance(taken, list) else [taken])
    array_list, names = _listed(taken) if device else as_array_list(taken, "grads")
    if names is not None and len(set(names)) != len(names):
        raise ValueError("grads has names that are equal as strings; each tensor needs its own name")
    snapshot = (array_list, names)
    if any(array is None for array in array_list):
        kept = [index for index, array in enumerate(array_list) if array is not None]
        names = None if names is None else [names[index] for index in kept]
        array_list = [array_list[index] for index in kept]
    if for_writing and not device:
        _core.check_writable(array_list, names, "grads")
    if layout != "sharded":
        if offsets is not None:
            raise ValueError('offsets are for layout="sharded"')
        return array_list, names, None, snapshot
    if names is None:
        raise ValueError('layout="sharded" needs the shards as a dict name -> shard (tensors are matched by name)')
    if offsets is None:
        return array_list, names, None, snapshot
    if not isinstance(offsets, dict):
        raise TypeError(f"offsets must be a dict name -> the shard's first element, not {type(offsets).__name__}")
    missing = [name for name in names if name not in offsets]
    if missing:
        raise ValueError(f"offsets has no entry for {missing[:5]}")
    return array_list, names, shard_offsets([offsets[name] for name in names], array_list), snapshot


class Call:
    """One distributed call on this rank. agree() takes one snapshot of the
    gradients (a generator is read once) and checks everything this rank can
    refuse: the call's own arguments (check(call), returning the terms every
    rank must give alike), the layout, the arrays. It runs inside the first
    exchange, so a refusal on any rank raises on every rank before anything
    is read or written, and every rank also refuses a call whose terms,
    layout or (replicated) tensors differ between ranks. The number of
    exchanges never depends on one rank's arguments."""

    def __init__(self, grads, group, layout, offsets, timeout, *, for_writing=False, check=None):
        self.comm = Communicator(group, timeout)
        self._grads, self._layout, self._offsets = grads, layout, offsets
        self._for_writing, self._check = for_writing, check
        self.arrays = self.names = self.given = self.grid = self.numel = self._snapshot = None
        self.on_device = False
        self.terms = None

    @property
    def present(self):
        """The gradients present (None entries left out), as a dict name -> array or a list."""
        return self.arrays if self.names is None else dict(zip(self.names, self.arrays))

    @property
    def grads(self):
        """The snapshot, as the caller gave it (None entries kept, for an optimiser to skip)."""
        arrays, names = self._snapshot
        return arrays if names is None else dict(zip(names, arrays))

    def _mine(self):
        if self.comm.refusal is not None:
            raise self.comm.refusal
        self.arrays, self.names, self.given, self._snapshot = _prepared(
            self._grads, self._layout, self._offsets, self._for_writing
        )
        self.on_device = on_device(self.arrays)
        self.terms = self._check(self) if self._check is not None else ()
        sizes = tuple(_numel(array) for array in self.arrays)
        given = None if self.given is None else tuple(self.given)
        return self.terms, self._layout, None if self.names is None else tuple(self.names), sizes, given

    def agree(self):
        everyone = exchange(self.comm, self._mine)
        terms = {rank: entry[0] for rank, entry in enumerate(everyone)}
        if len(set(terms.values())) > 1:
            raise ValueError(f"the ranks called with different arguments: {_by_rank(terms)}")
        layouts = {rank: entry[1] for rank, entry in enumerate(everyone)}
        if len(set(layouts.values())) > 1:
            raise ValueError(f"the ranks called with different layouts: {_by_rank(layouts)}")
        if self._layout == "replicated" and len({(entry[2], entry[3]) for entry in everyone}) > 1:
            raise ValueError(
                'layout="replicated" needs the same tensors on every rank, in the same order and of the same '
                "sizes; the ranks hold different ones"
            )
        if self._layout == "sharded":
            self._place_shards(everyone)
        return self

    def _place_shards(self, everyone):
        """Each shard's offset and its whole tensor's size, from every rank's entry.
        Every rank names every tensor, in one order (a rank holding none of a
        tensor gives an empty shard): a rank that leaves a name out would leave
        its part out of the norm."""
        names = {rank: entry[2] for rank, entry in enumerate(everyone)}
        if len(set(names.values())) > 1:
            raise ValueError(
                'layout="sharded" needs every rank to name the same tensors in the same order (an empty shard '
                f"where a rank holds none of one); the ranks differ: {_by_rank(names)}"
            )
        if len({entry[4] is None for entry in everyone}) > 1:
            raise ValueError('layout="sharded": some ranks gave offsets and others did not')
        sizes = np.array([entry[3] for entry in everyone], dtype=np.int64).reshape(len(everyone), len(self.names))
        if self.given is None:
            # Shard r starts where the shards of ranks < r with the same name end.
            self.grid = sizes[: self.comm.rank].sum(axis=0).tolist()
            self.numel = sizes.sum(axis=0).tolist()
        else:
            ends = np.array([entry[4] for entry in everyone], dtype=np.int64).reshape(sizes.shape) + sizes
            self.grid, self.numel = self.given, ends.max(axis=0).tolist()

    def partials(self, take):
        """(every rank's partials in rank order, whether to combine by name) of
        take(arrays, placement): placement is {} for whole tensors, else the
        shards' offsets and their tensors' numel (partials' keywords)."""

        def work():
            if self._layout == "replicated":
                sizes = [_numel(array) for array in self.arrays]
                chosen = _share(sizes, self.comm.rank, self.comm.size)
                if self.names is None:
                    return take([self.arrays[i] for i in chosen], {})
                return take({self.names[i]: self.arrays[i] for i in chosen}, {})
            if self._layout == "sharded":
                return take(self.present, {"offsets": self.grid, "numel": self.numel})
            return take(self.present, {})

        return exchange(self.comm, work), self._layout == "sharded"


def _by_rank(values):
    return "; ".join(f"rank {rank}: {value!r}" for rank, value in values.items())


def combined(call, take, combine):
    """combine(parts, by_name) of every rank's partials, take(arrays, placement, rescaled),
    for a call the ranks have agreed on. Every rank sees the same partials, so
    when the plain ones cannot be combined (the rare overflow-safe path) every
    rank takes the rescaled ones together."""
    for rescaled in (False, True):
        parts, by_name = call.partials(lambda arrays, placement, rescaled=rescaled: take(arrays, placement, rescaled))
        if call.on_device:  # statistics rows, already exact: one round
            return combine(parts, by_name)
        try:
            return combine(parts, by_name)
        except RescaledPartialsNeeded:
            continue
    raise AssertionError("rescaled partials always combine")
