"""Device gradients over ranks (torch tensors on an accelerator, or any torch
tensors under gradguard.torch.device_path()): each rank takes its tensors'
statistics on their device (gradguard.torch.device: one transfer of a small
table), the call's exchange gathers those tables, and every rank combines them
on the host by layout: rank order ("disjoint"), each rank's share
("replicated"), or the shards of each name merged ("sharded", Chan et al.'s
formula for the moments). Agrees with the core's combination to float32
rounding; the clip is applied on the device."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..stats import STATS_FIELDS, GradStats, stats_from_columns

__all__ = ["DeviceRows", "on_device", "device_rows", "combine_rows", "scale"]


@dataclass(frozen=True)
class DeviceRows:
    """One rank's statistics of its tensors: names (None for a list) and a (tensors, fields) table."""

    names: Optional[tuple]
    table: np.ndarray


def on_device(values) -> bool:
    """Whether these gradients take the device path: torch tensors that NumPy cannot view (or forced)."""
    tensors = [value for value in values if value is not None]
    if not tensors or not all(type(value).__module__.partition(".")[0] == "torch" for value in tensors):
        return False
    from ..torch.device import on_device_path

    return on_device_path(tensors)


def device_rows(arrays) -> DeviceRows:
    """This rank's rows: grad_stats' fields of each tensor, taken on its device."""
    from ..torch.device import device_grad_stats

    names = list(arrays) if isinstance(arrays, Mapping) else None
    tensors = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
    stats = device_grad_stats(tensors, names) if tensors else None
    table = np.zeros((0, len(STATS_FIELDS)))
    if stats is not None:
        table = np.stack([np.asarray(getattr(stats, name), dtype=np.float64) for name in STATS_FIELDS], axis=1)
    return DeviceRows(None if names is None else tuple(names), table)


def combine_rows(parts, by_name) -> GradStats:
    """grad_stats of every rank's tensors from their rows: in rank order, or by
    name with each name's shards merged."""
    from ..torch.device import merge_fields

    named = all(part.names is not None for part in parts) and parts
    if not by_name:
        table = np.concatenate([part.table for part in parts]) if parts else np.zeros((0, len(STATS_FIELDS)))
        names = [name for part in parts for name in part.names] if named else None
    else:
        names = list(dict.fromkeys(name for part in parts for name in part.names))
        rows = {name: [] for name in names}
        for part in parts:
            for name, row in zip(part.names, part.table):
                rows[name].append(row)
        table = (
            np.stack([merge_fields(np.stack(rows[name])) for name in names])
            if names
            else np.zeros((0, len(STATS_FIELDS)))
        )
    columns = {}
    for index, name in enumerate(STATS_FIELDS):
        values = table[:, index] if len(table) else np.zeros(0)
        columns[name] = np.rint(values).astype(np.int64) if name in ("numel", "n_nan", "n_inf", "n_zero") else values
    return stats_from_columns(columns, names)


def scale(arrays, coefficient) -> None:
    """The clip on the device: every tensor *= coefficient."""
    from ..torch.device import scale_on_device_

    tensors = list(arrays.values()) if isinstance(arrays, Mapping) else list(arrays)
    if tensors:
        scale_on_device_(tensors, coefficient)
