"""Benchmarks and their helpers (not part of the library's API): the
standard workloads, the bandwidth probes and the `gradguard bench` sections.
The pytest-benchmark suite in benchmarks/ times the same cases.

The names below are imported on first use (PEP 562): the cases import torch
when it is installed (two seconds), which `gradguard --help`, `--version` and
a mistyped option must not wait for."""

from __future__ import annotations

import importlib

# name -> the module of this package that defines it
_EXPORTS = {
    "make_cases": "clip_cases",
    "make_norm_cases": "norm_cases",
    "make_optimizer_cases": "optim_cases",
    "NORM_SHAPES": "norm_cases",
    "read_probes": "harness",
    "write_probes": "harness",
    "make_gradients": "workloads",
    "workload_names": "workloads",
    "workload_shapes": "workloads",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted({*globals(), *__all__})
