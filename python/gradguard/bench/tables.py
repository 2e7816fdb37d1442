"""Benchmarks: gradguard against plain NumPy and PyTorch (when installed) on
the standard workloads, with the machine's memory bandwidth measured in the
same run. `python -m gradguard bench` prints the table; the pytest-benchmark
suite in benchmarks/ runs the same cases.

Bytes moved per call: a norm or statistics pass reads every gradient once
(N bytes); an in-place clip reads them for the norm and reads and writes them
to scale (3N). The roofline is the time those bytes take at the best
bandwidth measured here: read-only passes at the read bandwidth, the scale
pass at the read+write bandwidth, each the best of gradguard's plain probe
loop, NumPy and torch.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from .. import _core, optim
from ..clip import clip_by_global_norm, global_norm
from ..config import get_num_threads, set_num_threads, simd_target
from ..norm import layer_norm, layer_norm_backward
from ..stats import grad_stats
from .workloads import make_gradients, workload_names

try:
    import torch
except ImportError:  # torch is optional: its columns are left out
    torch = None


# Idle time before each timed call. torch's OpenMP workers and OpenBLAS's
# threads keep spinning on the cores for milliseconds after a call returns;
# without a pause, whichever library runs next shares two cores with them.
SETTLE_SECONDS = 0.02


def interleaved_medians(functions, repeat, warmup=1, repeat_of=None, first=(), settle=SETTLE_SECONDS):
    """Median seconds of each function, timed round-robin: every round calls
    each function once. On a machine whose memory bandwidth drifts (a shared
    host), drift then affects every function alike. The functions named in
    `first` open every round; the others follow in an order rotated by one
    each round, so each follows every other equally often (caches it left
    warm or cold). Each timed call follows `settle` idle seconds and one
    untimed call of the same function.
    repeat_of: optional name -> repeat count for slow functions."""
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
                time.sleep(settle)
                functions[name]()  # untimed: wakes the library's threads, as in back-to-back use
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


@dataclass
class Bandwidth:
    read: float  # bytes/s, best of the read probes
    read_write: float  # bytes moved (read + written) per second, best of the write probes


# ---- the cases -------------------------------------------------------------------


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


def numpy_global_norm(arrays):
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def numpy_clip(arrays, max_norm):
    total = numpy_global_norm(arrays)
    coefficient = max_norm / (total + 1e-6)
    if coefficient < 1:
        for array in arrays:
            array *= np.float32(coefficient)
    return total


def numpy_stats(arrays):
    """The NumPy calls grad_stats replaces, per array."""
    return [
        (
            np.abs(a).mean(),
            a.std(),
            a.min(),
            a.max(),
            np.isnan(a).sum(),
            np.isinf(a).sum(),
            np.count_nonzero(a == 0),
            np.linalg.norm(a.ravel()),
        )
        for a in arrays
    ]


def torch_stats(tensors):
    return [
        (
            t.abs().mean(),
            t.std(unbiased=False),
            t.min(),
            t.max(),
            t.isnan().sum(),
            t.isinf().sum(),
            (t == 0).sum(),
            torch.linalg.vector_norm(t),
        )
        for t in tensors
    ]


class _ShrinkingBound:
    """max_norm just below the last total, so every call really clips (a bound
    at or above the norm makes clipping a no-op after the first call)."""

    def __init__(self):
        self.total = math.inf

    def next(self):
        return self.total * 0.999 if math.isfinite(self.total) else 1e30

    def update(self, total):
        self.total = float(total)


def make_cases(workload, gradients, operations=("global_norm", "clip_by_global_norm", "grad_stats")):
    """Benchmark cases on one workload's gradients (a dict name -> float32 array)."""
    arrays = list(gradients.values())
    nbytes = sum(a.nbytes for a in arrays)
    tensors = [torch.from_numpy(a) for a in arrays] if torch is not None else None
    parameters = None
    if torch is not None:
        parameters = []
        for tensor in tensors:  # parameters whose .grad are views of the NumPy gradients
            parameter = torch.nn.Parameter(torch.zeros(1).expand(tensor.shape))
            parameter.grad = tensor
            parameters.append(parameter)
    cases = []
    if "global_norm" in operations:
        case = Case(workload, "global_norm", nbytes, ("read",))
        case.implementations["gradguard"] = lambda: global_norm(arrays)
        case.implementations["numpy"] = lambda: numpy_global_norm(arrays)
        if torch is not None:
            case.implementations["torch"] = lambda: torch.nn.utils.get_total_norm(tensors)
        cases.append(case)
    if "clip_by_global_norm" in operations:
        case = Case(workload, "clip_by_global_norm", nbytes, ("read", "read_write"))
        bounds = {name: _ShrinkingBound() for name in ("gradguard", "numpy", "torch")}

        def gradguard_clip():
            bounds["gradguard"].update(clip_by_global_norm(arrays, bounds["gradguard"].next()))

        def plain_numpy_clip():
            bounds["numpy"].update(numpy_clip(arrays, bounds["numpy"].next()))

        case.implementations["gradguard"] = gradguard_clip
        case.implementations["numpy"] = plain_numpy_clip
        if torch is not None:

            def torch_clip():
                bounds["torch"].update(torch.nn.utils.clip_grad_norm_(parameters, bounds["torch"].next()))

            case.implementations["torch"] = torch_clip
        cases.append(case)
    if "grad_stats" in operations:
        case = Case(workload, "grad_stats", nbytes, ("read",))
        case.implementations["gradguard"] = lambda: grad_stats(arrays)
        from ..monitor import GradientMonitor

        monitor = GradientMonitor(names=list(gradients))
        case.implementations["gg monitor"] = lambda: monitor.update(arrays)
        case.implementations["numpy"] = lambda: numpy_stats(arrays)
        if torch is not None:
            case.implementations["torch"] = lambda: torch_stats(tensors)
        cases.append(case)
    return cases


# ---- layer norm -------------------------------------------------------------------

NORM_SHAPES = [(8192, 768), (2048, 4096), (65536, 128)]


def copy_probes(source, target):
    """x -> y copies (the yardstick of the norms: read one buffer, write another)."""
    probes = {"numpy copyto": lambda: np.copyto(target, source)}
    if torch is not None:
        source_tensor, target_tensor = torch.from_numpy(source), torch.from_numpy(target)
        probes["torch copy_"] = lambda: target_tensor.copy_(source_tensor)
    return probes


def numpy_layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    return (x - mean) * rstd * weight + bias, mean, rstd


def numpy_layer_norm_backward(dy, x, mean, rstd, weight):
    xhat = (x - mean) * rstd
    g = dy * weight
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


def make_norm_cases(shape, seed=0):
    """{"forward": {impl: fn}, "backward": {impl: fn}} for one (rows, features) float32 shape."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    out = np.empty_like(x)
    _, mean, rstd = layer_norm(x, weight, bias, return_stats=True)
    _, numpy_mean, numpy_rstd = numpy_layer_norm(x, weight, bias)
    forward = {
        "gradguard": lambda: layer_norm(x, weight, bias),
        "gradguard out=": lambda: layer_norm(x, weight, bias, out=out),
        "numpy": lambda: numpy_layer_norm(x, weight, bias),
    }
    backward = {
        "gradguard": lambda: layer_norm_backward(dy, x, mean, rstd, weight),
        "gradguard out=": lambda: layer_norm_backward(dy, x, mean, rstd, weight, out=out),
        "numpy": lambda: numpy_layer_norm_backward(dy, x, numpy_mean, numpy_rstd, weight),
    }
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(weight).requires_grad_()
        tb = torch.from_numpy(bias).requires_grad_()
        ty = torch.nn.functional.layer_norm(tx, (shape[1],), tw, tb)
        tdy = torch.from_numpy(dy)

        def torch_forward():
            with torch.no_grad():
                return torch.nn.functional.layer_norm(tx, (shape[1],), tw, tb)

        forward["torch"] = torch_forward
        backward["torch"] = lambda: torch.autograd.grad(ty, (tx, tw, tb), tdy, retain_graph=True)
    return {"forward": forward, "backward": backward, "copy": copy_probes(x, np.empty_like(x)), "nbytes": x.nbytes}


def run_norms(repeat, shapes=NORM_SHAPES):
    """Rows for the layer-norm section, each case timed round-robin with the copy probes."""
    rows = []
    for shape in shapes:
        cases = make_norm_cases(shape)
        nbytes = cases["nbytes"]
        copies = {f"copy: {name}": probe for name, probe in cases["copy"].items()}
        for direction, moved in (("forward", 2 * nbytes), ("backward", 3 * nbytes)):
            functions = dict(cases[direction])
            functions.update(copies)
            medians = interleaved_medians(functions, repeat, first=tuple(copies))
            copy_bandwidth = max(2 * nbytes / medians[name] for name in copies)
            for name in cases[direction]:
                seconds = medians[name]
                rows.append(
                    {
                        "shape": f"{shape[0]}x{shape[1]}",
                        "direction": direction,
                        "implementation": name,
                        "ms": seconds * 1e3,
                        "GB/s": moved / seconds / 1e9,
                        "copy_fraction": moved / seconds / copy_bandwidth,
                        "gg_speedup": seconds / medians["gradguard"],
                        "copy_GBps": copy_bandwidth / 1e9,
                    }
                )
        del cases
    return rows


def format_norm_table(rows):
    lines = [
        "layer norm, float32: forward reads x and writes y (2N bytes), backward reads x and dy and writes dx (3N);",
        "copy bw = best x -> y copy (torch copy_, numpy copyto) in the same rounds; 'out=' reuses the output buffer",
        "",
        f"{'shape':<11}{'direction':<10}{'impl':<16}{'ms':>8}{'GB/s':>7}{'of copy bw':>12}{'gg faster':>10}{'copy bw':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['shape']:<11}{row['direction']:<10}{row['implementation']:<16}{row['ms']:>8.2f}"
            f"{row['GB/s']:>7.1f}{row['copy_fraction'] * 100:>11.0f}%{row['gg_speedup']:>9.1f}x"
            f"{row['copy_GBps']:>7.0f}"
        )
    return "\n".join(lines)


# ---- fused optimiser steps ---------------------------------------------------------

# Bytes per parameter of one step, float32: the gradient norm reads the
# gradient (4); the update reads the gradient, the parameter and its states
# and writes the parameter and states.
OPTIMIZER_BYTES = {
    "adamw": {"read": 4, "read_write": 4 + 2 * 4 * 3},  # g; p, exp_avg, exp_avg_sq read and written
    "sgd": {"read": 4, "read_write": 4 + 2 * 4 * 2},  # g; p, momentum buffer
    "rmsprop": {"read": 4, "read_write": 4 + 2 * 4 * 2},  # g; p, square_avg
}


def make_optimizer_cases(workload="gpt2-small", seed=0):
    """{kind: {impl: step function}} on one workload; every implementation owns its
    parameters and states, and all see the same float32 gradients."""
    gradients = list(make_gradients(workload, seed=seed).values())
    rng = np.random.default_rng(seed + 1)
    initial = [rng.standard_normal(g.shape, dtype=np.float32) * 0.02 for g in gradients]
    max_norm = 1.0  # the gradients' norm is ~1.1e4: every step clips
    cases = {}

    def own_params():
        return [p.copy() for p in initial]

    def gg_pair(make):
        fused_params, unfused_params = own_params(), own_params()
        fused = make(fused_params, max_grad_norm=max_norm)
        unfused = make(unfused_params)
        unfused_grads = [g.copy() for g in gradients]  # the unfused clip scales these in place
        bound = _ShrinkingBound()  # so that the clip really scales on every call

        def unfused_step():
            bound.update(clip_by_global_norm(unfused_grads, min(max_norm, bound.next())))
            unfused.step(unfused_grads)

        return {"gradguard fused": lambda: fused.step(gradients), "gradguard clip+step": unfused_step}

    makers = {
        "adamw": lambda params, **kw: optim.AdamW(params, lr=1e-4, **kw),
        "sgd": lambda params, **kw: optim.SGD(params, lr=1e-3, momentum=0.9, **kw),
        "rmsprop": lambda params, **kw: optim.RMSprop(params, lr=1e-4, **kw),
    }
    for kind, make in makers.items():
        cases[kind] = gg_pair(make)
    if torch is not None:

        def torch_step(factory):
            parameters = [torch.nn.Parameter(torch.from_numpy(p)) for p in own_params()]
            for parameter, gradient in zip(parameters, gradients):
                parameter.grad = torch.from_numpy(gradient.copy())
            optimizer = factory(parameters)

            def step():
                torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                optimizer.step()

            return step

        cases["adamw"]["torch fused"] = torch_step(lambda p: torch.optim.AdamW(p, lr=1e-4, fused=True))
        cases["adamw"]["torch foreach"] = torch_step(lambda p: torch.optim.AdamW(p, lr=1e-4, foreach=True))
        cases["sgd"]["torch foreach"] = torch_step(lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9, foreach=True))
        cases["rmsprop"]["torch foreach"] = torch_step(lambda p: torch.optim.RMSprop(p, lr=1e-4, foreach=True))
    return cases, sum(g.size for g in gradients)


def run_optimizers(repeat, workload="gpt2-small"):
    cases, parameters = make_optimizer_cases(workload)
    probe_buffer = np.ones(512 * 2**20 // 4, dtype=np.float32)
    probes = {f"read: {name}": probe for name, probe in read_probes(probe_buffer).items()}
    probes.update({f"read+write: {name}": probe for name, probe in write_probes(probe_buffer).items()})
    rows = []
    for kind, implementations in cases.items():
        functions = dict(implementations)
        functions.update(probes)
        medians = interleaved_medians(functions, repeat, first=tuple(probes))
        bandwidth = _bandwidth_from(medians, probe_buffer.nbytes)
        bytes_per = OPTIMIZER_BYTES[kind]
        roofline = parameters * (bytes_per["read"] / bandwidth.read + bytes_per["read_write"] / bandwidth.read_write)
        moved = parameters * (bytes_per["read"] + bytes_per["read_write"])
        for name in implementations:
            seconds = medians[name]
            rows.append(
                {
                    "optimizer": kind,
                    "implementation": name,
                    "ms": seconds * 1e3,
                    "roofline_ms": roofline * 1e3,
                    "x_roofline": seconds / roofline,
                    "gg_speedup": seconds / medians["gradguard fused"],
                    "MB_moved_fused": moved / 1e6,
                }
            )
    return rows


def format_optimizer_table(rows, workload="gpt2-small"):
    lines = [
        f"fused optimiser steps on {workload}, float32, every step clipping by global norm (max_norm 1.0);",
        "roofline: one gradient read for the norm plus the update's reads and writes (AdamW 28 B/param, SGD-momentum",
        "and RMSprop 20 B/param) at the read and read+write bandwidth of the same rounds",
        "",
        f"{'optimizer':<10}{'impl':<22}{'ms':>9}{'roofline':>10}{'x roof':>8}{'gg faster':>10}",
    ]
    for row in rows:
        lines.append(
            f"{row['optimizer']:<10}{row['implementation']:<22}{row['ms']:>9.2f}{row['roofline_ms']:>10.2f}"
            f"{row['x_roofline']:>8.2f}{row['gg_speedup']:>9.2f}x"
        )
    return "\n".join(lines)


# ---- the table -----------------------------------------------------------------------


def run(workloads, repeat, threads, slow_repeat=3):
    """Measure every case, each interleaved with the bandwidth probes; return rows."""
    set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    probe_buffer = np.ones(512 * 2**20 // 4, dtype=np.float32)
    probes = {f"read: {name}": probe for name, probe in read_probes(probe_buffer).items()}
    probes.update({f"read+write: {name}": probe for name, probe in write_probes(probe_buffer).items()})
    rows = []
    for workload in workloads:
        gradients = make_gradients(workload)
        cases = make_cases(workload, gradients)
        if workload == "many-small":
            one = {"all": np.concatenate([a.ravel() for a in gradients.values()])}
            for case in make_cases("many-small as one tensor", one, ("clip_by_global_norm", "grad_stats")):
                case.implementations = {"gradguard": case.implementations["gradguard"]}
                cases.append(case)
        for case in cases:
            functions = dict(case.implementations)
            functions.update(probes)
            # NumPy's and torch's per-tensor statistics take up to a second: fewer repeats.
            slow = {
                name: slow_repeat
                for name in case.implementations
                if name != "gradguard" and case.operation == "grad_stats"
            }
            medians = interleaved_medians(functions, repeat, repeat_of=slow, first=tuple(probes))
            bandwidth = _bandwidth_from(medians, probe_buffer.nbytes)
            roofline = case.roofline_seconds(bandwidth)
            for name in case.implementations:
                seconds = medians[name]
                rows.append(
                    {
                        "workload": case.workload,
                        "operation": case.operation,
                        "implementation": name,
                        "ms": seconds * 1e3,
                        "GB/s": case.bytes_moved() / seconds / 1e9,
                        "roofline_ms": roofline * 1e3,
                        "x_roofline": seconds / roofline,
                        "gg_speedup": seconds / medians["gradguard"],
                        "read_GBps": bandwidth.read / 1e9,
                        "read_write_GBps": bandwidth.read_write / 1e9,
                    }
                )
        del gradients, cases
    return rows


def _bandwidth_from(medians, nbytes):
    read = {name: nbytes / seconds for name, seconds in medians.items() if name.startswith("read: ")}
    write = {name: 2 * nbytes / seconds for name, seconds in medians.items() if name.startswith("read+write: ")}
    return Bandwidth(max(read.values()), max(write.values()))


def format_table(rows, threads):
    lines = [
        f"gradguard {simd_target()} target, {threads} threads"
        + (
            f"; torch {torch.__version__} on {torch.get_num_threads()} threads"
            if torch is not None
            else "; torch not installed"
        ),
        "each case is timed round-robin with the bandwidth probes (512 MiB buffer, run first in each round,",
        "then the implementations in rotating order; each timed call follows 20 ms idle, so no other",
        "library's threads are still spinning, and one untimed call); the roofline is the case's bytes at the best",
        "read / read+write bandwidth of the same rounds (for many-small, 8 MB, the data can sit in cache)",
        "",
        f"{'workload':<26}{'operation':<21}{'impl':<11}{'ms':>9}{'GB/s':>7}{'roofline':>10}{'x roof':>8}"
        f"{'gg faster':>10}{'bw read/rw':>12}",
    ]
    for row in rows:
        lines.append(
            f"{row['workload']:<26}{row['operation']:<21}{row['implementation']:<11}{row['ms']:>9.2f}"
            f"{row['GB/s']:>7.1f}{row['roofline_ms']:>10.2f}{row['x_roofline']:>8.2f}"
            f"{row['gg_speedup']:>9.1f}x{row['read_GBps']:>6.0f}/{row['read_write_GBps']:<4.0f}"
        )
    return "\n".join(lines)


def add_arguments(parser):
    """The options of `gradguard bench`."""
    parser.add_argument("--workloads", nargs="+", default=workload_names(), choices=workload_names())
    parser.add_argument(
        "--repeat", type=positive_count, default=7, help="timed calls per measurement (median reported)"
    )
    parser.add_argument(
        "--threads", type=positive_count, default=get_num_threads(), help="threads for gradguard and torch"
    )
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["clip", "norm", "optim"],
        choices=["clip", "norm", "optim", "backward", "sharded", "detection"],
        help="clip: norms, clipping and statistics of the workloads; norm: layer norm; "
        "optim: fused optimiser steps on gpt2-small; backward: a gpt2-small-shaped transformer's backward "
        "+ clip + AdamW, the norm taken during backward (needs torch); sharded: the global-norm clip of "
        "gpt2-small's gradients sharded over 2 processes (needs torch); "
        "detection: the monitor on labelled training runs",
    )


def positive_count(text):
    """argparse type: an int >= 1 (a one-line error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None):
    """`gradguard bench` on its own (python -m gradguard.bench.tables)."""
    parser = argparse.ArgumentParser(
        prog="gradguard bench", description="Time gradguard against NumPy and torch on the standard workloads."
    )
    add_arguments(parser)
    return run_from_arguments(parser.parse_args(argv))


def run_from_arguments(arguments):
    if "clip" in arguments.sections:
        rows = run(arguments.workloads, arguments.repeat, arguments.threads)
        print(format_table(rows, arguments.threads))
    if "norm" in arguments.sections:
        set_num_threads(arguments.threads)
        if torch is not None:
            torch.set_num_threads(arguments.threads)
        print()
        print(format_norm_table(run_norms(arguments.repeat)))
    if "optim" in arguments.sections:
        set_num_threads(arguments.threads)
        if torch is not None:
            torch.set_num_threads(arguments.threads)
        print()
        print(format_optimizer_table(run_optimizers(max(3, arguments.repeat // 2))))
    if "backward" in arguments.sections:
        print()
        if torch is None:
            print("backward: skipped, torch is not installed")
        else:
            from .backward import format_measurement, measure

            set_num_threads(arguments.threads)
            torch.set_num_threads(arguments.threads)
            medians, agreement = measure(rounds=max(3, arguments.repeat // 2))
            print(format_measurement(medians, agreement, 4, 64))
    if "sharded" in arguments.sections:
        print()
        if torch is None:
            print("sharded: skipped, torch is not installed")
        else:
            from .sharded import format_sharded, measure_sharded

            print(format_sharded(measure_sharded(repeat=arguments.repeat)))
    if "detection" in arguments.sections:
        from .detection import main_section

        print()
        main_section()
    return 0
