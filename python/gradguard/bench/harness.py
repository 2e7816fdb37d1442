"""The timing harness the benchmark sections share: optional torch, the
bandwidth probes, interleaved best-of-many medians, and what a case is."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _core

try:
    import torch
except ImportError:  # torch is optional: its columns are left out
    torch = None


# Idle time before each timed call. torch's OpenMP workers and OpenBLAS's
# threads keep spinning on the cores for milliseconds after a call returns;
# without a pause, whichever library runs next shares two cores with them.
SETTLE_SECONDS = 0.02


def _wait(seconds, busy):
    """Idle (sleep) or keep this thread busy (spin) for `seconds`."""
    if not busy:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def interleaved_medians(
    functions, repeat, warmup=1, repeat_of=None, first=(), settle=SETTLE_SECONDS, before=None, busy_settle=False
):
    """Median seconds of each function, timed round-robin: every round calls
    each function once. On a machine whose memory bandwidth drifts (a shared
    host), drift then affects every function alike. The functions named in
    `first` open every round; the others follow in an order rotated by one
    each round, so each follows every other equally often (caches it left
    warm or cold). Each timed call follows `settle` idle seconds and one
    untimed call of the same function. busy_settle: spend those seconds
    spinning on this thread instead of sleeping (on a VM whose cores clock
    down or are handed to other guests when idle, a call after idle runs
    slower, the more so the more it computes per byte).
    repeat_of: optional name -> repeat count for slow functions. before: an
    untimed callable run right before each timed call (e.g. restoring inputs
    the functions change in place)."""
    counts = {name: (repeat_of or {}).get(name, repeat) for name in functions}
    times = {name: [] for name in functions}
    rotating = [name for name in functions if name not in first]
    for _ in range(warmup):
        for function in functions.values():
            function()
    for round_index in range(max(counts.values())):
        shift = round_index % max(1, len(rotating))
        for name in list(first) + rotating[shift:] + rotating[:shift]:
            if round_index < counts[name]:
                _wait(settle, busy_settle)
                functions[name]()  # untimed: wakes the library's threads, as in back-to-back use
                if before is not None:
                    before()
                start = time.perf_counter()
                functions[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


# ---- bandwidth probes --------------------------------------------------------------


def read_probes(buffer):
    """Read-only loops over a float32 buffer: name -> callable."""
    probes = {"gradguard plain loop": lambda: _core.read_probe(buffer), "numpy sum": lambda: buffer.sum()}
    if torch is not None:
        tensor = torch.from_numpy(buffer)
        probes["torch sum"] = lambda: tensor.sum()
    return probes


def write_probes(buffer):
    """In-place read+write loops over a float32 buffer: name -> callable."""
    # Multiplying by 1 + 2^-23 keeps values finite for thousands of calls.
    factor = 1.0 + 2.0**-23
    probes = {
        "gradguard plain loop": lambda: _core.scale([buffer], factor, None),
        "numpy multiply": lambda: np.multiply(buffer, np.float32(factor), out=buffer),
    }
    if torch is not None:
        tensor = torch.from_numpy(buffer)
        probes["torch mul_"] = lambda: tensor.mul_(factor)
    return probes


def copy_probes(source, target):
    """x -> y copies (the yardstick of the norms: read one buffer, write another)."""
    probes = {"numpy copyto": lambda: np.copyto(target, source)}
    if torch is not None:
        source_tensor, target_tensor = torch.from_numpy(source), torch.from_numpy(target)
        probes["torch copy_"] = lambda: target_tensor.copy_(source_tensor)
    return probes


def fresh_copy_probes(source):
    """x -> a newly allocated y: the yardstick of a call without out=, which
    pays the same page faults (glibc hands an array of 32 MiB or more fresh
    pages from the kernel on every allocation; smaller ones it recycles)."""
    probes = {"numpy copy": lambda: np.copy(source)}
    if torch is not None:
        source_tensor = torch.from_numpy(source)
        probes["torch clone"] = lambda: source_tensor.clone()
    return probes


@dataclass
class Bandwidth:
    read: float  # bytes/s, best of the read probes
    read_write: float  # bytes moved (read + written) per second, best of the write probes


@dataclass
class Case:
    """One operation on one workload, implemented by several libraries."""

    workload: str
    operation: str
    nbytes: int  # gradient bytes
    passes: tuple  # ("read",) or ("read", "read_write")
    implementations: dict = field(default_factory=dict)  # name -> callable

    def roofline_seconds(self, bandwidth):
        seconds = 0.0
        for kind in self.passes:
            seconds += self.nbytes / bandwidth.read if kind == "read" else 2 * self.nbytes / bandwidth.read_write
        return seconds

    def bytes_moved(self):
        return self.nbytes * sum(1 if kind == "read" else 2 for kind in self.passes)


def bandwidth_from(medians, nbytes):
    read = {name: nbytes / seconds for name, seconds in medians.items() if name.startswith("read: ")}
    write = {name: 2 * nbytes / seconds for name, seconds in medians.items() if name.startswith("read+write: ")}
    return Bandwidth(max(read.values()), max(write.values()))


class ShrinkingBound:
    """max_norm just below the last total, so every call really clips (a bound
    at or above the norm makes clipping a no-op after the first call)."""

    def __init__(self):
        self.total = math.inf

    def next(self):
        return self.total * 0.999 if math.isfinite(self.total) else 1e30

    def update(self, total):
        self.total = float(total)
