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
CUDA, wider on the CPU; float32 for float16/bfloat16 tensors; sum |x| in
float64). A tensor whose
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
    "merge_fields",
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
    any of them is not a plain CPU tensor NumPy can view (another device, or a
    DTensor), or the path is forced."""
    return _forced() or any(t.device.type != "cpu" or _is_dtensor(t) for t in tensors)


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


def accumulation_dtype(dtype):
    """The dtype to accumulate a reduction of `dtype` in (None: its own)."""
    return _torch.float32 if dtype in (_torch.float16, _torch.bfloat16) else None


# The columns of the per-tensor tables the device computes: grad_stats' fields
# in a mergeable form (counts add; l2 by its squares; mean, std and abs_mean
# over each part's finite entries merge with Chan et al.'s formula).
_COLUMNS = ("numel", "n_nan", "n_inf", "n_zero", "l2", "mean", "std", "abs_mean", "min", "max")
_COLUMN = {name: index for index, name in enumerate(_COLUMNS)}


def _fast_table(tensors, full, counted):
    """(host table (tensors, 10), the rows computed): the fast pass. On the device
    only what needs the values, column by column (a few kernels per (device,
    dtype) group, not per tensor), in group order; one transfer; the host puts
    the rows in order and fills what it knows (sizes; non-finite counts 0 until
    the exact pass; what full / counted leave out NaN, n_zero -1)."""
    numel = np.array([t.numel() for t in tensors], dtype=np.float64)
    table = np.full((len(tensors), len(_COLUMNS)), math.nan)
    table[:, _COLUMN["numel"]] = numel
    table[:, [_COLUMN["n_nan"], _COLUMN["n_inf"], _COLUMN["l2"]]] = 0.0
    table[:, _COLUMN["n_zero"]] = 0.0 if counted else np.where(numel > 0, -1.0, 0.0)
    names = ["l2"] + (["nonzero"] if counted else []) + (["abs_sum", "mean", "std", "min", "max"] if full else [])
    first, pieces, order = tensors[0].device, [], []
    for (_, dtype), indices in _groups(tensors).items():
        kept = [i for i in indices if numel[i]]
        if not kept:
            continue
        group = [tensors[i].detach() for i in kept]
        wide = accumulation_dtype(dtype)
        columns = {"l2": _torch._foreach_norm(group, 2, dtype=wide)}
        if counted:
            columns["nonzero"] = [_torch.count_nonzero(t) for t in group]
        if full:
            # sum |x| in float64 (torch allows dtype= here): float32 sums of |x| drift by ~n eps on long tensors
            columns["abs_sum"] = _torch._foreach_norm(group, 1, dtype=_torch.float64)
            variances, means = zip(*(_torch.var_mean(t if wide is None else t.to(wide), correction=0) for t in group))
            extremes = [_torch.aminmax(t) for t in group]
            columns.update(
                mean=means,
                std=[variance.sqrt() for variance in variances],
                min=[low for low, _ in extremes],
                max=[high for _, high in extremes],
            )
        pieces.append(
            _torch.stack(
                [_torch.stack(list(columns[name])).to(device=first, dtype=_torch.float64) for name in names], 1
            )
        )
        order.extend(kept)
    if not pieces:
        return table, np.zeros(0, dtype=np.int64)
    values, order = to_host(_torch.cat(pieces)), np.array(order, dtype=np.int64)
    for position, name in enumerate(names):
        column = values[:, position]
        if name == "nonzero":
            table[order, _COLUMN["n_zero"]] = numel[order] - column
        elif name == "abs_sum":
            table[order, _COLUMN["abs_mean"]] = column / numel[order]
        else:
            table[order, _COLUMN[name]] = column
    return table, order


def _local_rows(tensors, full, counted):
    """(tensors, 10) on the host for this rank's tensors: the fast pass, then the
    exact float64 pass for the tensors it cannot vouch for (non-finite, beyond
    or below what float32 squares hold): one transfer, two on such a step."""
    table, computed = _fast_table(tensors, full, counted)
    l2 = table[computed, _COLUMN["l2"]]
    suspect = ~np.isfinite(l2) | (l2 < _TINY_NORM)
    if full:
        suspect |= ~np.all(np.isfinite(table[computed, _COLUMN["mean"] :]), axis=1)
    if counted:
        nonzero = table[computed, _COLUMN["numel"]] - table[computed, _COLUMN["n_zero"]]
        suspect &= (nonzero > 0) | ~np.isfinite(l2)  # a norm of 0 over zeros only is exact
    rare = computed[suspect]
    if len(rare):
        exact = to_host(_exact_table([tensors[i] for i in rare]))
        if not full:
            exact[:, [_COLUMN[name] for name in ("mean", "std", "abs_mean", "min", "max")]] = math.nan
        table[rare] = exact
    return table


def _exact_table(tensors):
    """(tensors, 10) float64: grad_stats' fields of each tensor in float64 on its
    device (the rare path), on the first tensor's device."""
    first = tensors[0].device
    rows = []
    for tensor in tensors:
        values = tensor.detach().reshape(-1).to(_torch.float64)
        finite = _torch.isfinite(values)
        kept = values[finite]
        nan = _torch.isnan(values).sum()
        counts = [
            finite.new_full((), values.numel(), dtype=_torch.int64),
            nan,
            (~finite).sum() - nan,
            (values == 0).sum(),
        ]
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
        rows.append(_torch.stack([c.to(_torch.float64) for c in counts] + moments).to(first))
    return _torch.stack(rows)


def _merge(parts):
    """(tensors, 10) from (parts, tensors, 10): each tensor's parts (its shards
    on the ranks) combined. Counts add, l2 = sqrt(sum l2^2), min and max over
    the parts, mean, std and abs_mean over the finite entries of all parts
    (Chan et al.: M2 = sum M2_k + sum n_k (mean_k - mean)^2)."""
    if len(parts) == 1:
        return parts[0].copy()
    column = _COLUMN
    merged = np.full(parts.shape[1:], math.nan)
    counts = parts[:, :, [column["numel"], column["n_nan"], column["n_inf"]]].sum(axis=0)
    merged[:, [column["numel"], column["n_nan"], column["n_inf"]]] = counts
    zeros = parts[:, :, column["n_zero"]]
    merged[:, column["n_zero"]] = np.where((zeros < 0).any(axis=0), -1, zeros.sum(axis=0))
    l2 = parts[:, :, column["l2"]]
    largest = np.max(l2, axis=0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        safe = np.where((largest > 0) & np.isfinite(largest), largest, 1.0)
        merged[:, column["l2"]] = np.where(
            np.isfinite(largest) & (largest > 0), safe * np.sqrt(np.sum((l2 / safe) ** 2, axis=0)), largest
        )
        finite = parts[:, :, column["numel"]] - parts[:, :, column["n_nan"]] - parts[:, :, column["n_inf"]]
        total = finite.sum(axis=0)
        weights = np.where(finite > 0, finite, 0.0)
        mean_parts = np.where(finite > 0, parts[:, :, column["mean"]], 0.0)
        mean = np.sum(weights * mean_parts, axis=0) / total
        spread = np.where(finite > 0, parts[:, :, column["std"]] ** 2 * finite + finite * (mean_parts - mean) ** 2, 0.0)
        merged[:, column["mean"]] = mean
        merged[:, column["std"]] = np.sqrt(np.sum(spread, axis=0) / total)
        absolute = np.where(finite > 0, parts[:, :, column["abs_mean"]], 0.0)
        merged[:, column["abs_mean"]] = np.sum(weights * absolute, axis=0) / total
        present = finite > 0
        merged[:, column["min"]] = np.where(
            total > 0, np.min(np.where(present, parts[:, :, column["min"]], np.inf), 0), np.nan
        )
        merged[:, column["max"]] = np.where(
            total > 0, np.max(np.where(present, parts[:, :, column["max"]], -np.inf), 0), np.nan
        )
    return merged


def merge_fields(rows) -> np.ndarray:
    """grad_stats' fields (in STATS_FIELDS order) of one tensor from its parts' rows
    (parts, len(STATS_FIELDS)), merged as the shards of a DTensor are."""
    parts = np.stack([rows[:, STATS_FIELDS.index(name)] for name in _COLUMNS], axis=1)[:, None, :]
    merged = _merge(parts)[0]
    return np.array([merged[_COLUMN[name]] for name in STATS_FIELDS])


class _Shards:
    """How the tensors of one call are spread over ranks: plain tensors (and
    replicated DTensors) are whole on every rank; DTensors sharded along one
    mesh dimension (FSDP2, HSDP) have one shard a rank of that dimension's group."""

    def __init__(self, tensors):
        self.local, self.sharded, self.group = [], [], None
        groups = set()
        for index, tensor in enumerate(tensors):
            if not _is_dtensor(tensor):
                self.local.append(tensor)
                self.sharded.append(False)
                continue
            kinds = [type(placement).__name__ for placement in tensor.placements]
            if "Partial" in kinds or any(kind not in ("Shard", "Replicate", "_StridedShard") for kind in kinds):
                raise ValueError(
                    f"tensors[{index}] is a DTensor with placements {tensor.placements}: gradguard reads "
                    "gradients that are sharded or replicated (a Partial one is reduced first)"
                )
            shard_dims = [dim for dim, kind in enumerate(kinds) if kind != "Replicate"]
            if len(shard_dims) > 1:
                raise ValueError(
                    f"tensors[{index}] is sharded over {len(shard_dims)} mesh dimensions {tensor.placements}; "
                    "gradguard's device path takes DTensors sharded along one (FSDP2, HSDP)"
                )
            self.local.append(tensor.to_local())
            self.sharded.append(bool(shard_dims))
            if shard_dims:
                groups.add((id(tensor.device_mesh), shard_dims[0]))
                self.group = tensor.device_mesh.get_group(shard_dims[0])
        if len(groups) > 1:
            raise ValueError("the DTensors of one call must be sharded along the same mesh dimension")
        self.sharded = np.array(self.sharded, dtype=bool)

    def merged(self, table):
        """(tensors, 10) of whole tensors from this rank's rows: the shard group's
        rows gathered (one exchange of the small table), each sharded tensor's
        shards merged; whole tensors keep their own row."""
        if self.group is None:
            return table
        import torch.distributed as distributed

        gathered = [None] * distributed.get_world_size(self.group)
        distributed.all_gather_object(gathered, table, group=self.group)
        merged = _merge(np.stack(gathered))
        merged[~self.sharded] = table[~self.sharded]
        return merged


def _is_dtensor(tensor) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "to_local")


def device_grad_stats(tensors, names=None, *, full: bool = True, count_zeros: bool = True) -> GradStats:
    """gg.grad_stats of torch tensors on any device, computed there (see the
    module's accuracy note) with one transfer to the host. DTensor gradients
    (FSDP2) give the statistics of each whole tensor: each rank's shard rows
    are all-gathered over the shard group as one small tensor, then merged.

    full=False takes what the monitor's detectors read, at the cost of one
    read of the gradients (torch's foreach norm, as clip_grad_norm_ takes):
    l2, and the non-finite counts (exact: a tensor whose l2 is not finite, 0
    or below 2^-60 is recomputed exactly). mean, std, abs_mean, min and max
    are then NaN, and n_zero is counted only with count_zeros (one more read;
    a monitor needs it when its dead_fraction is below 1), else it is -1 (not
    counted) except for tensors found all zero, which are exact."""
    tensors = list(tensors)
    fields = {name: np.full(len(tensors), math.nan) for name in STATS_FIELDS}
    if tensors:
        shards = _Shards(tensors)
        # Each rank vouches for its own shards (the exact pass is local), so the merge needs one exchange.
        table = shards.merged(_local_rows(shards.local, full, full or count_zeros))
        for name in STATS_FIELDS:
            fields[name] = table[:, _COLUMN[name]]
    for name in ("numel", "n_nan", "n_inf", "n_zero"):
        fields[name] = np.rint(fields[name]).astype(np.int64)
    ndim = np.array([tensor.dim() for tensor in tensors], dtype=np.int64)
    return stats_from_columns(fields, names, ndim=ndim)


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
