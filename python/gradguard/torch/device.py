"""The device path: gradients NumPy cannot view (cuda, mps, xpu, ...; and CPU
tensors on request, which is how it is tested without an accelerator),
handled on their own device by torch's multi-tensor kernels, grouped by
(device, dtype) as torch.nn.utils.clip_grad_norm_ groups them.

What a step needs from the gradients (per-tensor statistics, the global norm)
is computed on the device, stacked into one small float64 table and brought
to the host in one transfer, through `to_host`, the one function that moves
data to the host (tests count its calls). Clipping needs no transfer: the
coefficient stays on the device, as in torch's clip_grad_norm_.

Accuracy: per-tensor sums accumulate as torch's reductions do (float32 on
CUDA, wider on the CPU; float32 for float16/bfloat16 tensors). A tensor whose
norm is not finite (inf/NaN, or squares beyond float32) or below 2^-60 (squares
that may underflow) is recomputed entirely in float64, with grad_stats'
definitions (non-finite entries counted apart, moments over the finite ones):
that rare step takes a second transfer, for those tensors only.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading

import numpy as np
import torch as _torch

from ..clip import CLIP_EPS
from ..stats import STATS_FIELDS, GradStats, stats_from_columns

__all__ = [
    "FORCE_ENVIRONMENT",
    "device_path",
    "on_device_path",
    "to_host",
    "transfer_count",
    "device_grad_stats",
    "needs_zero_counts",
    "device_total_norm",
    "clip_on_device_",
    "clamp_on_device_",
    "scale_on_device_",
]

# GRADGUARD_TORCH_DEVICE_PATH=1 sends CPU tensors through the device path too
# (how the test suite runs every torch test over both paths).
FORCE_ENVIRONMENT = "GRADGUARD_TORCH_DEVICE_PATH"
_state = threading.local()
_transfers = [0]
# Below this norm, float32 squares may underflow; the tensor is recomputed in float64.
_TINY_NORM = 2.0**-60


def _forced() -> bool:
    forced = getattr(_state, "forced", None)
    return os.environ.get(FORCE_ENVIRONMENT) == "1" if forced is None else forced


@contextlib.contextmanager
def device_path(enabled: bool = True):
    """Within the block (this thread), CPU tensors go through the device path
    too (enabled=True), or only tensors NumPy cannot view do (False)."""
    previous = getattr(_state, "forced", None)
    _state.forced = bool(enabled)
    try:
        yield
    finally:
        _state.forced = previous


def on_device_path(tensors) -> bool:
    """Whether these tensors are handled by torch's kernels on their device:
    any of them is not a plain CPU tensor NumPy can view, or the path is forced."""
    return _forced() or any(t.device.type != "cpu" for t in tensors)


def to_host(tensor: _torch.Tensor) -> np.ndarray:
    """The one transfer to the host: a float64 NumPy copy of `tensor`."""
    if tensor.device.type == "meta":
        raise ValueError(
            "tensors on the meta device hold no values: statistics need real gradients "
            "(clipping alone works on meta tensors, as torch's does)"
        )
    _transfers[0] += 1
    return tensor.detach().to(device="cpu", dtype=_torch.float64).numpy()


def transfer_count() -> int:
    """How many times to_host has run in this process (for tests and benchmarks)."""
    return _transfers[0]


def _groups(tensors):
    """{(device, dtype): [indices]} in first-appearance order."""
    groups = {}
    for index, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(index)
    return groups


def _wide(dtype):
    """The dtype to accumulate a reduction of `dtype` in (None: its own)."""
    return _torch.float32 if dtype in (_torch.float16, _torch.bfloat16) else None


def _stack_columns(columns, device):
    return _torch.stack([_torch.stack(list(column)).to(device=device, dtype=_torch.float64) for column in columns], 1)


def _rows(tensors, full, count_zeros):
    """Per tensor on its device: (l2[, sum |x|][, count of nonzero x][, mean, std, min, max]),
    one float64 table per device."""
    per_device = {}
    for (device, dtype), indices in _groups(tensors).items():
        group = [tensors[i].detach() for i in indices if tensors[i].numel()]
        kept = [i for i in indices if tensors[i].numel()]
        if not group:
            continue
        wide = _wide(dtype)
        columns = [_torch._foreach_norm(group, 2, dtype=wide)]
        if full:
            columns.append(_torch._foreach_norm(group, 1, dtype=wide))
        if full or count_zeros:
            columns.append([_torch.count_nonzero(t) for t in group])
        if full:
            variances, means = zip(*(_torch.var_mean(t if wide is None else t.to(wide), correction=0) for t in group))
            smallest, largest = zip(*(_torch.aminmax(t) for t in group))
            columns += [means, [v.sqrt() for v in variances], smallest, largest]
        per_device.setdefault(device, ([], []))
        per_device[device][0].extend(kept)
        per_device[device][1].append(_stack_columns(columns, device))
    return [(indices, _torch.cat(tables)) for indices, tables in per_device.values()]


def _exact_rows(tensors):
    """grad_stats' fields of a few tensors in float64 on their device (the rare path), one table a device."""
    per_device = {}
    for tensor in tensors:
        values = tensor.detach().reshape(-1).to(_torch.float64)
        finite = _torch.isfinite(values)
        kept = values[finite]
        nan = _torch.isnan(values).sum()
        counts = [_torch.tensor(values.numel(), device=values.device), nan, (~finite).sum() - nan, (values == 0).sum()]
        if kept.numel():
            # Moments of kept / 2^k with 2^k near max |x| (exact scaling), as reference.grad_stats takes them.
            scale = _torch.frexp(kept.abs().max())[1].to(_torch.float64)
            scaled = kept * _torch.exp2(-scale)
            variance, mean = _torch.var_mean(scaled, correction=0)
            moments = [
                _torch.linalg.vector_norm(scaled) * _torch.exp2(scale),
                mean * _torch.exp2(scale),
                variance.sqrt() * _torch.exp2(scale),
                scaled.abs().mean() * _torch.exp2(scale),
                kept.min(),
                kept.max(),
            ]
        else:
            moments = [_torch.zeros((), dtype=_torch.float64, device=values.device)] + [
                _torch.full((), math.nan, dtype=_torch.float64, device=values.device)
            ] * 5
        row = _torch.stack([c.to(_torch.float64) for c in counts] + moments)
        per_device.setdefault(values.device, []).append(row)
    return [_torch.stack(rows) for rows in per_device.values()]


_EXACT = ("numel", "n_nan", "n_inf", "n_zero", "l2", "mean", "std", "abs_mean", "min", "max")


def device_grad_stats(tensors, names=None, *, full: bool = True, count_zeros: bool = True) -> GradStats:
    """gg.grad_stats of torch tensors on any device, computed there (see the
    module's accuracy note) with one transfer to the host.

    full=False takes what the monitor's detectors read, at the cost of one
    read of the gradients (torch's foreach norm, as clip_grad_norm_ takes):
    l2, and the non-finite counts (exact: a tensor whose l2 is not finite, 0
    or below 2^-60 is recomputed exactly). mean, std, abs_mean, min and max
    are then NaN, and n_zero is counted only with count_zeros (one more read;
    a monitor needs it when its dead_fraction is below 1), else it is -1 (not
    counted) except for tensors found all zero, which are exact."""
    tensors = list(tensors)
    count = len(tensors)
    numel = np.array([t.numel() for t in tensors], dtype=np.int64)
    fields = {name: np.full(count, math.nan) for name in STATS_FIELDS}
    for name in ("numel", "n_nan", "n_inf", "n_zero"):
        fields[name] = np.zeros(count, dtype=np.int64)
    fields["numel"] = numel
    fields["l2"] = np.zeros(count)
    counted = full or count_zeros
    if not counted:
        fields["n_zero"][numel > 0] = -1
    rows = _rows(tensors, full, count_zeros)
    if rows:
        table = to_host(_torch.cat([table.to(rows[0][1].device) for _, table in rows]))
        indices = np.array([i for group, _ in rows for i in group], dtype=np.int64)
        l2 = fields["l2"][indices] = table[:, 0]
        suspect = ~np.isfinite(l2) | (l2 < _TINY_NORM)
        if full:
            fields["abs_mean"][indices] = table[:, 1] / numel[indices]
            for column, name in enumerate(("mean", "std", "min", "max"), start=3):
                fields[name][indices] = table[:, column]
            suspect |= ~np.all(np.isfinite(table[:, 1:]), axis=1)
        if counted:
            nonzero = table[:, 2 if full else 1]
            fields["n_zero"][indices] = numel[indices] - nonzero.astype(np.int64)
            suspect &= (nonzero > 0) | ~np.isfinite(l2)  # a norm of 0 over zeros only is exact
        rare = indices[suspect]
        if len(rare):
            exact = np.concatenate([to_host(t) for t in _exact_rows([tensors[i] for i in rare])])
            for column, name in enumerate(_EXACT):
                if full or name not in ("mean", "std", "abs_mean", "min", "max"):
                    fields[name][rare] = exact[:, column]
    return stats_from_columns(fields, names)


def needs_zero_counts(monitor) -> bool:
    """Whether a monitor's detectors read zero counts beyond "the whole tensor is zero"
    (its dead_fraction below 1); None (no monitor) needs none."""
    settings = getattr(monitor, "settings", None)
    return settings is not None and settings.dead_fraction < 1.0


def device_total_norm(tensors, norm_type=2.0):
    """torch.nn.utils.get_total_norm's value on the device (no transfer): the
    norm_type-norm of the per-tensor norms of each (device, dtype) group, taken
    on the first tensor's device."""
    norm_type = float(norm_type)
    first = tensors[0].device
    norms = []
    for indices in _groups(tensors).values():
        norms.extend(n.to(first) for n in _torch._foreach_norm([tensors[i] for i in indices], norm_type))
    return _torch.linalg.vector_norm(_torch.stack(norms), norm_type)


def scale_on_device_(tensors, coefficient) -> None:
    """tensors *= coefficient (a float, or a 0-dim tensor left on its device), group by group."""
    for (device, _), indices in _groups(tensors).items():
        factor = coefficient.to(device) if isinstance(coefficient, _torch.Tensor) else coefficient
        _torch._foreach_mul_([tensors[i] for i in indices], factor)


def clamp_on_device_(tensors, low, high) -> None:
    """torch.nn.utils.clip_grad_value_'s rule on the device: clamp_min(low), then clamp_max(high)."""
    for indices in _groups(tensors).values():
        group = [tensors[i] for i in indices]
        _torch._foreach_clamp_min_(group, low)
        _torch._foreach_clamp_max_(group, high)


def clip_on_device_(tensors, max_norm, total_norm) -> None:
    """torch's clip rule with the total on the device: tensors *= min(1, max_norm / (total + CLIP_EPS))."""
    if not isinstance(total_norm, _torch.Tensor):
        total_norm = _torch.tensor(float(total_norm), device=tensors[0].device)
    coefficient = _torch.clamp(float(max_norm) / (total_norm + CLIP_EPS), max=1.0)
    scale_on_device_(tensors, coefficient)
