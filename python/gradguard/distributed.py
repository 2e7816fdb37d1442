"""Gradient norms, clipping, statistics and optimiser steps across processes.

Every function here takes `group=`: a torch.distributed process group (None:
the default group, once torch.distributed.init_process_group has run) or an
mpi4py communicator. Ranks exchange mergeable partials (gg.norm_partials,
gg.stats_partials) with the engine's own all-gather and every rank combines
them in the same fixed order, so every rank gets the same result, bit for bit
the single-process one over all the gradients (see gradguard.partials).

`layout` says how the gradients are spread:

- "replicated" (data parallel, after the gradients' all-reduce): every rank
  holds every tensor, and each is counted once. Each rank reads only its
  share of the tensors (contiguous blocks, balanced by size) for the norm.
- "disjoint" (pipeline or tensor parallel): each rank holds its own tensors;
  the global order is rank order, then each rank's order.
- "sharded" (ZeRO / FSDP): each rank holds a contiguous shard of every tensor,
  flattened, in a dict name -> shard. `offsets` (name -> the shard's first
  element within the whole tensor) defaults to rank order: shard r starts
  where the shards of ranks < r with that name end. Statistics are per whole
  tensor. Bit-identical to one process when every boundary is a multiple of
  gg.PIECE_ELEMENTS (gg.shard_bounds cuts them so), to rounding otherwise.

Failures are collective: a rank whose arguments are refused raises its own
error and every other rank raises RankFailed naming it, before anything is
written anywhere. A rank that never arrives (it died or hangs) makes the
others raise when the engine's timeout expires: torch.distributed's process
group timeout (init_process_group(timeout=)), or `timeout=` here for MPI.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Union

import numpy as np

from . import _core
from ._arguments import Arrays, Real, as_array_list, non_negative, norm_order, real
from .partials import (
    NormPartials,
    RescaledPartialsNeeded,
    StatsPartials,
    combine_norm_details,
    combine_norm_partials,
    combine_stats_partials,
    norm_partials,
    stats_partials,
)
from .stats import GradStats

__all__ = [
    "LAYOUTS",
    "RankFailed",
    "global_norm",
    "clip_by_global_norm",
    "grad_stats",
    "monitor_update",
    "optimizer_step",
    "combine_norm_over_ranks",
    "combine_stats_over_ranks",
    "step_with_global_norm",
]

LAYOUTS = ("replicated", "disjoint", "sharded")
# How long an MPI rank waits for the others to arrive at a call, by default.
_MPI_TIMEOUT = 300.0


class RankFailed(RuntimeError):
    """Another rank's part of a collective call failed (its arguments were
    refused, or it raised): this rank raises too, having written nothing.
    failures: [(rank, message)]."""

    def __init__(self, failures):
        self.failures = list(failures)
        detail = "; ".join(f"rank {rank}: {message}" for rank, message in self.failures)
        super().__init__(f"the call failed on another rank, so on every rank ({detail})")


class _Communicator:
    """rank, size and an all-gather of Python objects over torch.distributed or mpi4py."""

    def __init__(self, group, timeout):
        self._mpi = group is not None and hasattr(group, "allgather") and hasattr(group, "Get_rank")
        self._timeout = _MPI_TIMEOUT if timeout is None else real(timeout, "timeout", low=0.0, low_open=True)
        if self._mpi:
            self._group = group
            self.rank, self.size = group.Get_rank(), group.Get_size()
            return
        if timeout is not None:
            raise ValueError("timeout= is for MPI; torch.distributed uses its process group's timeout")
        try:
            import torch.distributed as torch_distributed
        except ImportError:
            raise ValueError(
                "group must be a torch.distributed process group or an mpi4py communicator (torch is not installed)"
            ) from None
        if not torch_distributed.is_available() or not torch_distributed.is_initialized():
            raise ValueError(
                "no process group: call torch.distributed.init_process_group first, or pass group= "
                "(a torch.distributed process group or an mpi4py communicator)"
            )
        if group is not None and not isinstance(group, torch_distributed.ProcessGroup):
            raise TypeError(
                f"group must be a torch.distributed ProcessGroup or an mpi4py communicator, not {type(group).__name__}"
            )
        self._torch = torch_distributed
        self._group = group
        self.rank = torch_distributed.get_rank(group)
        self.size = torch_distributed.get_world_size(group)

    def all_gather(self, value):
        if self._mpi:
            self._wait_for_everyone()
            return self._group.allgather(value)
        gathered = [None] * self.size
        self._torch.all_gather_object(gathered, value, group=self._group)
        return gathered

    def _wait_for_everyone(self):
        """A non-blocking barrier polled up to the timeout: a rank that never
        arrives makes the others raise instead of blocking in the all-gather."""
        request = self._group.Ibarrier()
        deadline = time.monotonic() + self._timeout
        pause = 1e-5
        while not request.Test():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rank {self.rank}: the other ranks did not reach the call within {self._timeout} s "
                    "(the communicator cannot be used again)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1e-2)


def _exchange(comm, work):
    """Runs work() here, gathers every rank's result in rank order, and raises on
    every rank when any rank failed (the failing rank re-raises its own error)."""
    try:
        payload = (True, work())
    except Exception as error:  # noqa: BLE001 - re-raised below, after the others have heard of it
        local_error = error
        payload = (False, f"{type(error).__name__}: {error}")
    else:
        local_error = None
    gathered = comm.all_gather(payload)
    failures = [(rank, message) for rank, (ok, message) in enumerate(gathered) if not ok]
    if local_error is not None:
        raise local_error
    if failures:
        raise RankFailed(failures)
    return [value for _, value in gathered]


def _over_ranks(parts, kind, combine, group, timeout):
    comm = _Communicator(group, timeout)

    def mine():
        listed = list(parts)
        if not all(isinstance(part, kind) for part in listed):
            raise TypeError(f"parts must be a list of {kind.__name__}")
        return listed

    return combine([part for rank_parts in _exchange(comm, mine) for part in rank_parts])


def combine_norm_over_ranks(parts, *, group=None, timeout: Optional[Real] = None) -> float:
    """The global norm from every rank's norm partials of its own tensors (a
    list of gg.NormPartials the caller took, e.g. during backward), gathered
    and combined in rank order on every rank ("disjoint"): bit for bit
    gg.global_norm of all the tensors in that order. RescaledPartialsNeeded,
    on every rank alike, when the rare path needs partials taken with rescaled=True."""
    return _over_ranks(parts, NormPartials, combine_norm_partials, group, timeout)


def combine_stats_over_ranks(parts, *, group=None, timeout: Optional[Real] = None) -> GradStats:
    """gg.grad_stats of every rank's tensors from their gg.StatsPartials, as
    combine_norm_over_ranks does for the norm."""
    return _over_ranks(parts, StatsPartials, combine_stats_partials, group, timeout)


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


def _partials(grads, group, layout, offsets, timeout, take, *, for_writing=False):
    """(every rank's partials in rank order, whether to combine by name).
    Everything that can fail runs inside an exchange, so it fails on every rank."""
    comm = _Communicator(group, timeout)
    prepared = []

    def prepare():
        prepared.append(_prepared(grads, layout, offsets, for_writing))
        array_list, names, _ = prepared[0]
        return {name: int(np.size(array)) for name, array in zip(names or (), array_list)}

    grid = None
    if layout == "sharded" and offsets is None:
        # Shard r starts where the shards of ranks < r with the same name end.
        everyone = _exchange(comm, prepare)
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

    everyone = _exchange(comm, work)
    if layout == "replicated" and len({sizes for sizes, _ in everyone}) > 1:
        raise ValueError('layout="replicated" needs the same tensors on every rank; the ranks hold different sizes')
    return [part for _, part in everyone], layout == "sharded"


def _combined(grads, where, take, combine, for_writing=False):
    """combine(parts, by_name) of every rank's partials, take(arrays, offsets, rescaled).
    Every rank sees the same partials, so when the plain ones cannot be combined
    (the rare overflow-safe path) every rank takes the rescaled ones together."""
    for rescaled in (False, True):
        parts, by_name = _partials(
            grads, *where, lambda arrays, grid, rescaled=rescaled: take(arrays, grid, rescaled), for_writing=for_writing
        )
        try:
            return combine(parts, by_name)
        except RescaledPartialsNeeded:
            continue
    raise AssertionError("rescaled partials always combine")


def _norm_over_ranks(grads, ord, group, layout, offsets, timeout, for_writing=False):
    """(total, keys of non-finite tensors) of the global norm over every rank."""
    order = norm_order(ord)
    total, _, nonfinite, _ = _combined(
        grads,
        (group, layout, offsets, timeout),
        lambda arrays, grid, rescaled: norm_partials(arrays, order, rescaled=rescaled, offsets=grid),
        lambda parts, by_name: combine_norm_details(parts, by_name=by_name),
        for_writing,
    )
    return total, nonfinite


def global_norm(
    grads: Arrays,
    ord: Union[Real, str] = 2.0,
    *,
    group=None,
    layout: str = "disjoint",
    offsets: Optional[dict] = None,
    timeout: Optional[Real] = None,
) -> float:
    """The p-norm of the gradients of every rank taken together, on every rank:

        total = (sum over ranks, tensors, elements |g|^p)^(1/p)    (max |g| for p = inf)

    each tensor counted once whatever the layout; NaN on any rank gives NaN
    everywhere, otherwise inf anywhere gives inf. Equal bit for bit to
    gg.global_norm of all the gradients in their global order."""
    return _norm_over_ranks(grads, ord, group, layout, offsets, timeout)[0]


def clip_by_global_norm(
    grads: Arrays,
    max_norm: Real,
    *,
    ord: Union[Real, str] = 2.0,
    eps: Real = 1e-6,
    error_if_nonfinite: bool = False,
    return_report: bool = False,
    group=None,
    layout: str = "disjoint",
    offsets: Optional[dict] = None,
    timeout: Optional[Real] = None,
) -> float:
    """Scale every rank's gradients in place by one coefficient so that their
    global norm (over all ranks) is at most max_norm; torch's rule:

        total = global_norm(grads over every rank)
        clip_coef = min(1, max_norm / (total + eps)),   grads *= clip_coef

    Every rank's arrays are validated (writable, contiguous, separate) before
    any rank writes; with error_if_nonfinite a NaN/inf total raises
    gg.NonFiniteNormError on every rank and nothing is modified.
    Returns the total norm before clipping, or with return_report a
    gg.ClipReport (nonfinite: the names, or global indices, of the tensors
    holding NaN/inf on any rank)."""
    from .clip import ClipReport, NonFiniteNormError, clip_with_norm_

    bound = non_negative(max_norm, "max_norm")
    epsilon = non_negative(eps, "eps", allow_inf=False)
    total, nonfinite = _norm_over_ranks(grads, ord, group, layout, offsets, timeout, for_writing=True)
    if error_if_nonfinite and not math.isfinite(total):
        raise NonFiniteNormError(
            f"the total norm of order {ord} over every rank is {total}, so nothing was clipped "
            f"(non-finite values in: {', '.join(map(str, nonfinite))})"
        )
    coefficient = clip_with_norm_(grads, bound, total, eps=epsilon)
    if not return_report:
        return total
    return ClipReport(
        total_norm=total,
        clip_coef=coefficient,
        clipped=coefficient != 1.0,
        max_norm=bound,
        nonfinite=tuple(nonfinite),
    )


def grad_stats(
    grads: Arrays,
    *,
    group=None,
    layout: str = "disjoint",
    offsets: Optional[dict] = None,
    timeout: Optional[Real] = None,
) -> GradStats:
    """gg.grad_stats of every rank's gradients together, on every rank: one
    entry per tensor (per whole tensor for "sharded", its shards' partials
    merged with Chan et al.'s formula), in the global order, bit for bit the
    single-process result. Takes the rescaled pass only when some tensor needs it."""
    return _combined(
        grads,
        (group, layout, offsets, timeout),
        lambda arrays, grid, rescaled: stats_partials(arrays, rescaled=rescaled, offsets=grid),
        lambda parts, by_name: combine_stats_partials(parts, by_name=by_name),
    )


def monitor_update(monitor, grads: Arrays, step: Optional[int] = None, **where) -> list:
    """Feed a GradientMonitor (the same on every rank) with the statistics of
    every rank's gradients (grad_stats(grads, **where)); returns the step's
    findings, the same on every rank."""
    return monitor.update_stats(grad_stats(grads, **where), step)


def optimizer_step(
    optimizer,
    grads: Arrays,
    *,
    loss_scaler=None,
    return_report: bool = False,
    group=None,
    layout: str = "disjoint",
    offsets: Optional[dict] = None,
    timeout: Optional[Real] = None,
):
    """One step of a gg.optim optimiser holding this rank's parameters (its
    shards, its layers, or a replica), clipped by the global norm over every
    rank when the optimiser has max_grad_norm:

        total = global_norm(grads over every rank) (unscaled by the loss scale)
        step(grads, grad_norm=total)    # the coefficient min(1, max_norm / (total + eps)) inside the update

    A step whose gradients hold inf/NaN on any rank is skipped on every rank
    (parameters and state untouched, the loss scaler backing off), the one
    outcome that keeps ranks consistent. Returns what optimizer.step returns."""
    total, nonfinite = _norm_over_ranks(grads, 2.0, group, layout, offsets, timeout)
    return step_with_global_norm(
        optimizer, grads, total, nonfinite, loss_scaler=loss_scaler, return_report=return_report
    )


def step_with_global_norm(optimizer, grads, total, nonfinite=(), *, loss_scaler=None, return_report=False, **options):
    """optimizer.step(grads, grad_norm=total) with `total` the (loss-scaled)
    global norm over every rank, or, when it is inf/NaN, the step skipped here
    as on every other rank (the loss scaler backing off). `options` go to
    optimizer.step."""
    from .optim import StepReport

    if not math.isfinite(total):
        if loss_scaler is not None:
            loss_scaler.update(True)
        if return_report:
            names = getattr(optimizer, "_names", None)
            return StepReport(total, math.nan, True, tuple(nonfinite), None, None, tuple(names) if names else None)
        return total
    inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
    return optimizer.step(
        grads, loss_scaler=loss_scaler, return_report=return_report, grad_norm=total * inverse_scale, **options
    )
