"""Benchmarks and their helpers (not part of the library's API): the
standard workloads, the bandwidth probes and the `python -m gradguard bench`
table. The pytest-benchmark suite in benchmarks/ times the same cases."""

from .tables import (
    NORM_SHAPES,
    main,
    make_cases,
    make_norm_cases,
    make_optimizer_cases,
    read_probes,
    torch,
    write_probes,
)
from .workloads import make_gradients, workload_names, workload_shapes

__all__ = [
    "main",
    "make_cases",
    "make_norm_cases",
    "make_optimizer_cases",
    "NORM_SHAPES",
    "read_probes",
    "write_probes",
    "torch",
    "make_gradients",
    "workload_names",
    "workload_shapes",
]
