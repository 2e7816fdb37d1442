"""Benchmarks and their helpers (not part of the library's API): the
standard workloads, the bandwidth probes and the `gradguard bench` sections.
The pytest-benchmark suite in benchmarks/ times the same cases."""

from .clip_cases import make_cases
from .harness import read_probes, write_probes
from .norm_cases import NORM_SHAPES, make_norm_cases
from .optim_cases import make_optimizer_cases
from .workloads import make_gradients, workload_names, workload_shapes

__all__ = [
    "make_cases",
    "make_norm_cases",
    "make_optimizer_cases",
    "NORM_SHAPES",
    "read_probes",
    "write_probes",
    "make_gradients",
    "workload_names",
    "workload_shapes",
]
