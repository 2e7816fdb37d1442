"""Benchmarks: gradguard against plain NumPy and PyTorch (when installed) on
the standard workloads, with the machine's memory bandwidth measured in the
same run. `gradguard bench --sections clip` prints the table; the pytest-benchmark
suite in benchmarks/ runs the same cases.

Bytes moved per call: a norm or statistics pass reads every gradient once
(N bytes); an in-place clip reads them for the norm and reads and writes them
to scale (3N). The roofline is the time those bytes take at the best
bandwidth measured here: read-only passes at the read bandwidth, the scale
pass at the read+write bandwidth, each the best of gradguard's plain probe
loop, NumPy and torch. The grad_stats cases also time that plain read loop
over the workload's own arrays ("plain read"): their memory may sit on
smaller pages than the probe buffer's, and read slower whatever reads it.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _core
from ..clip import CLIP_EPS, clip_by_global_norm, global_norm
from ..config import set_num_threads, simd_target
from ..stats import grad_stats
from .harness import Case, ShrinkingBound, bandwidth_from, interleaved_medians, read_probes, torch, write_probes
from .workloads import make_gradients

PLAIN_READ = "plain read"


def numpy_global_norm(arrays):
    return math.sqrt(sum(float(np.vdot(a, a)) for a in arrays))


def numpy_clip(arrays, max_norm):
    total = numpy_global_norm(arrays)
    coefficient = max_norm / (total + CLIP_EPS)
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
        bounds = {name: ShrinkingBound() for name in ("gradguard", "numpy", "torch")}

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
        if all(a.dtype == np.float32 and a.flags.c_contiguous for a in arrays):
            # The plainest read of these very arrays: their pages (4 KiB, or the 2 MiB
            # NumPy asks for from 4 MiB up) bound any pass over them, the probe buffer's may not.
            case.implementations[PLAIN_READ] = lambda: _core.read_probe(arrays)
        cases.append(case)
    return cases


# ---- layer norm -------------------------------------------------------------------


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
                if name not in ("gradguard", PLAIN_READ) and case.operation == "grad_stats"
            }
            medians = interleaved_medians(functions, repeat, repeat_of=slow, first=tuple(probes))
            bandwidth = bandwidth_from(medians, probe_buffer.nbytes)
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
        "read / read+write bandwidth of the same rounds (for many-small, 8 MB, the data can sit in cache);",
        f"'{PLAIN_READ}' is the probe's loop over the workload's own arrays (their pages, not the probe buffer's)",
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
