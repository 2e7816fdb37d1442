"""Threads and SIMD target: what the core runs with, and how to change it."""

from __future__ import annotations

import numpy as np

from . import _core
from ._arguments import positive_int

__all__ = ["set_num_threads", "get_num_threads", "usable_cores", "simd_target", "config", "show_config"]


# Beyond any machine's cores; keeps the count an int for the core.
_MAX_THREADS = 1 << 16


def set_num_threads(count: int) -> None:
    """Use `count` >= 1 threads in the core (default: the cores this process may run on).

    If the system refuses to start that many threads, the previous count is kept
    and a RuntimeError says so.
    """
    count = positive_int(count, "count")
    if count > _MAX_THREADS:
        raise ValueError(f"count must be at most {_MAX_THREADS}, got {count}")
    _core.set_num_threads(count)


def get_num_threads() -> int:
    """Threads the core uses."""
    return _core.get_num_threads()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1: the core's default thread count."""
    return _core.usable_cores()


def simd_target() -> str:
    """The SIMD target in use: 'avx512', 'avx2' or 'baseline'.

    Chosen at import as the best the CPU (and OS) supports; the environment
    variable GRADGUARD_SIMD=avx2|baseline caps it.
    """
    return _core.simd_target()


def config() -> dict:
    """The build and run-time configuration as a dict."""
    from . import __version__

    try:
        import ml_dtypes

        bfloat16 = f"yes (ml_dtypes {ml_dtypes.__version__})"
    except ImportError:
        bfloat16 = "no (pip install ml_dtypes)"
    return {
        "gradguard": __version__,
        "simd_target": _core.simd_target(),
        "cpu_supports": ", ".join(_core.supported_targets()),
        "compiled_targets": ", ".join(_core.compiled_targets()),
        "threads": _core.get_num_threads(),
        "usable_cores": _core.usable_cores(),
        "compiler": _core.compiler,
        "numpy": np.__version__,
        "bfloat16": bfloat16,
    }


def show_config() -> None:
    """Print the SIMD target, threads, compiler and optional features."""
    settings = config()
    width = max(len(key) for key in settings)
    for key, value in settings.items():
        print(f"{key:<{width}}  {value}")
