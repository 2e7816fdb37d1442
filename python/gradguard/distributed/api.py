"""The public distributed calls (see gradguard.distributed)."""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

from .._arguments import Arrays, Real, boolean, non_negative, norm_order, positive_int
from ..clip import CLIP_EPS, ClipReport, clip_coefficient, clip_with_norm_, nonfinite_norm_error
from ..optim import StepReport
from ..partials import (
    NormPartials,
    StatsPartials,
    combine_norm_details,
    combine_norm_partials,
    combine_stats_partials,
    norm_partials,
    stats_partials,
)
from ..stats import GradStats
from .communicator import Communicator, exchange
from .device_rows import combine_rows, device_rows, scale
from .layout import Call, combined

__all__ = [
    "global_norm",
    "clip_by_global_norm",
    "grad_stats",
    "monitor_update",
    "optimizer_step",
    "combine_norm_over_ranks",
    "combine_stats_over_ranks",
    "step_with_global_norm",
]


def _over_ranks(parts, kind, combine, group, timeout, check):
    comm = Communicator(group, timeout)

    def mine():
        if comm.refusal is not None:
            raise comm.refusal
        if check is not None:
            check()
        listed = list(parts)
        if not all(isinstance(part, kind) for part in listed):
            raise TypeError(f"parts must be a list of {kind.__name__}")
        return listed

    return combine([part for rank_parts in exchange(comm, mine) for part in rank_parts])


def combine_norm_over_ranks(
    parts, *, group=None, timeout: Optional[Real] = None, check: Optional[Callable[[], None]] = None
) -> float:
    """The global norm from every rank's norm partials of its own tensors (a
    list of gg.NormPartials the caller took, e.g. during backward), gathered
    and combined in rank order on every rank ("disjoint"): bit for bit
    gg.global_norm of all the tensors in that order. RescaledPartialsNeeded,
    on every rank alike, when the rare path needs partials taken with rescaled=True.
    check: run on this rank inside the exchange (e.g. the step about to be
    taken, optimizer.check_step): an exception there raises on this rank and
    RankFailed on every other, before any rank goes on."""
    return _over_ranks(parts, NormPartials, combine_norm_partials, group, timeout, check)


def combine_stats_over_ranks(
    parts, *, group=None, timeout: Optional[Real] = None, check: Optional[Callable[[], None]] = None
) -> GradStats:
    """gg.grad_stats of every rank's tensors from their gg.StatsPartials, as
    combine_norm_over_ranks does for the norm (check likewise)."""
    return _over_ranks(parts, StatsPartials, combine_stats_partials, group, timeout, check)


def _device_stats(call) -> GradStats:
    """grad_stats over every rank of device gradients (device_rows)."""
    return combined(call, lambda arrays, placement, rescaled: device_rows(arrays), combine_rows)


def _norm_order_here(call, ord):
    """The norm's order, checked; device gradients take the L2 norm (their statistics' l2)."""
    order = norm_order(ord)
    if call.on_device and order != 2.0:
        raise ValueError(f"device gradients take ord=2 here (got {ord!r}); move them to the CPU for other orders")
    return order


def _norm_over_ranks(call):
    """(total, keys of non-finite tensors) of the global norm over every rank, for an
    agreed call whose terms are (name, ord, ...)."""
    if call.on_device:
        stats = _device_stats(call)
        return stats.global_norm, stats.nonfinite()
    order = call.terms[1]
    total, _, nonfinite, _ = combined(
        call,
        lambda arrays, placement, rescaled: norm_partials(arrays, order, rescaled=rescaled, **placement),
        lambda parts, by_name: combine_norm_details(parts, by_name=by_name),
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
    call = Call(grads, group, layout, offsets, timeout, check=lambda call: ("global_norm", _norm_order_here(call, ord)))
    return _norm_over_ranks(call.agree())[0]


def clip_by_global_norm(
    grads: Arrays,
    max_norm: Real,
    *,
    ord: Union[Real, str] = 2.0,
    eps: Real = CLIP_EPS,
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

    def check(call):
        bound, epsilon = non_negative(max_norm, "max_norm"), non_negative(eps, "eps", allow_inf=False)
        return (
            "clip_by_global_norm",
            _norm_order_here(call, ord),
            bound,
            epsilon,
            boolean(error_if_nonfinite, "error_if_nonfinite"),
        )

    call = Call(grads, group, layout, offsets, timeout, for_writing=True, check=check).agree()
    _, _, bound, epsilon, _ = call.terms
    total, nonfinite = _norm_over_ranks(call)
    if error_if_nonfinite and not math.isfinite(total):
        raise nonfinite_norm_error(total, ord, nonfinite, where="over every rank")
    if call.on_device:
        coefficient = clip_coefficient(bound, total, epsilon)
        if coefficient != 1.0:  # the core's rule: a coefficient of 1 writes nothing
            scale(call.present, coefficient)
    else:
        coefficient = clip_with_norm_(call.present, bound, total, eps=epsilon)
    if not return_report:
        return total
    return ClipReport(
        total_norm=total, clip_coef=coefficient, clipped=coefficient != 1.0, max_norm=bound, nonfinite=tuple(nonfinite)
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
    return _stats_over_ranks(grads, lambda call: ("grad_stats",), group, layout, offsets, timeout)


def _stats_over_ranks(grads, check, group, layout, offsets, timeout):
    call = Call(grads, group, layout, offsets, timeout, check=check).agree()
    if call.on_device:
        return _device_stats(call)
    return combined(
        call,
        lambda arrays, placement, rescaled: stats_partials(arrays, rescaled=rescaled, **placement),
        lambda parts, by_name: combine_stats_partials(parts, by_name=by_name),
    )


def monitor_update(
    monitor,
    grads: Arrays,
    step: Optional[int] = None,
    *,
    group=None,
    layout: str = "disjoint",
    offsets: Optional[dict] = None,
    timeout: Optional[Real] = None,
) -> list:
    """Feed a GradientMonitor (the same on every rank) with the statistics of
    every rank's gradients (grad_stats(grads, ...)); returns the step's
    findings, the same on every rank. The monitor and step are checked in the
    first exchange: a monitor refused on one rank, or monitors that differ
    between ranks (layers, last step), raise on every rank before any records."""

    def check(call):
        if not hasattr(monitor, "update_stats") or not hasattr(monitor, "state_dict"):
            raise TypeError(f"monitor must be a gg.GradientMonitor, not {type(monitor).__name__}")
        given = None if step is None else positive_int(step, "step", minimum=0)
        names = None if monitor.names is None else tuple(monitor.names)
        return ("monitor_update", names, monitor.summary()["last_step"], given)

    stats = _stats_over_ranks(grads, check, group, layout, offsets, timeout)
    return monitor.update_stats(stats, step)


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

    Every rank's step is checked (optimizer.check_step: the gradients, the loss
    scaler, the hyperparameters) inside the first exchange: a step refused on
    one rank raises there and RankFailed on every other rank, and no rank
    writes anything. A step whose gradients hold inf/NaN on any rank is
    skipped on every rank (parameters and state untouched, the loss scaler
    backing off), the one outcome that keeps ranks consistent. Returns what
    optimizer.step returns."""

    def check(call):
        if call.on_device:
            raise TypeError(
                "gg.optim steps arrays in CPU memory; for gradients on a device, clip them with "
                "gradguard.distributed.clip_by_global_norm and step torch's optimiser"
            )
        if not hasattr(optimizer, "check_step"):
            raise TypeError(f"optimizer must be a gg.optim optimiser, not {type(optimizer).__name__}")
        optimizer.check_step(call.grads, loss_scaler=loss_scaler)
        return ("optimizer_step", 2.0)

    call = Call(grads, group, layout, offsets, timeout, check=check).agree()
    total, nonfinite = _norm_over_ranks(call)
    return step_with_global_norm(
        optimizer, call.grads, total, nonfinite, loss_scaler=loss_scaler, return_report=return_report
    )


def step_with_global_norm(optimizer, grads, total, nonfinite=(), *, loss_scaler=None, return_report=False, **options):
    """optimizer.step(grads, grad_norm=total) with `total` the (loss-scaled)
    global norm over every rank, or, when it is inf/NaN, the step skipped here
    as on every other rank (the loss scaler backing off). `options` go to
    optimizer.step."""
    if not math.isfinite(total):
        if loss_scaler is not None:
            loss_scaler.update(True)
        if return_report:
            return StepReport(total, math.nan, True, tuple(nonfinite), None, None, getattr(optimizer, "names", None))
        return total
    inverse_scale = 1.0 if loss_scaler is None else 1.0 / loss_scaler.get_scale()
    return optimizer.step(
        grads, loss_scaler=loss_scaler, return_report=return_report, grad_norm=total * inverse_scale, **options
    )
