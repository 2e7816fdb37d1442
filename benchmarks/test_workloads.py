"""pytest-benchmark: gradguard (on each SIMD target the CPU has), NumPy and torch
on the standard workloads, one group per workload and operation, so ratios read
directly. Run: pytest benchmarks --benchmark-only  (add --benchmark-group-by=group)."""

import numpy as np
import pytest

from gradguard import _core
from gradguard.bench import make_cases, read_probes, write_probes
from gradguard.bench.workloads import make_gradients, workload_names

OPERATIONS = ["global_norm", "clip_by_global_norm", "grad_stats"]
IMPLEMENTATIONS = [f"gradguard-{target}" for target in _core.supported_targets()] + ["numpy", "torch"]


@pytest.fixture(scope="module")
def cases_of():
    """Cases for one workload at a time (gpt2-small's gradients are 0.5 GB)."""
    current = {}

    def get(workload):
        if workload not in current:
            current.clear()
            current[workload] = {case.operation: case for case in make_cases(workload, make_gradients(workload))}
        return current[workload]

    return get


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("workload", workload_names())
def test_workload(benchmark, cases_of, workload, operation, implementation):
    case = cases_of(workload)[operation]
    library, _, target = implementation.partition("-")
    if library not in case.implementations:
        pytest.skip(f"{library} is not installed")
    function = case.implementations[library]
    if target:
        previous = _core.simd_target()

        def on_target():
            _core.use_target(target)
            try:
                function()
            finally:
                _core.use_target(previous)

        run = on_target
    else:
        run = function
    benchmark.group = f"{workload} {operation}"
    benchmark.extra_info["bytes_moved"] = case.bytes_moved()
    slow = library != "gradguard" and operation == "grad_stats"
    benchmark.pedantic(run, rounds=3 if slow else 10, iterations=1, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = case.bytes_moved() / benchmark.stats.stats.median / 1e9


_PROBE_NAMES = [("read", name) for name in read_probes(np.zeros(16, np.float32))] + [
    ("read_write", name) for name in write_probes(np.zeros(16, np.float32))
]


@pytest.mark.parametrize("kind, probe", _PROBE_NAMES, ids=[f"{k}-{n}" for k, n in _PROBE_NAMES])
def test_bandwidth(benchmark, kind, probe):
    """The roofline's yardsticks: plain loops over a 512 MiB float32 buffer."""
    buffer = np.ones(128 * 2**20, dtype=np.float32)
    probes = read_probes(buffer) if kind == "read" else write_probes(buffer)
    benchmark.group = f"bandwidth {kind}"
    benchmark.pedantic(probes[probe], rounds=5, iterations=1, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = buffer.nbytes * (1 if kind == "read" else 2) / benchmark.stats.stats.median / 1e9


def test_monitor_update_costs_one_read(benchmark, cases_of):
    """GradientMonitor.update on gpt2-small: one grad_stats pass plus bookkeeping."""
    import gradguard as gg
    from gradguard.bench.workloads import make_gradients

    gradients = make_gradients("gpt2-small")
    monitor = gg.GradientMonitor()
    benchmark.group = "gpt2-small grad_stats"
    benchmark.pedantic(lambda: monitor.update(gradients), rounds=10, iterations=1, warmup_rounds=1)


def test_plain_read_reads_every_array_of_the_list_once():
    """The grad_stats cases' 'plain read': the probe's loop over a workload's own arrays."""
    arrays = [np.ones(n, np.float32) for n in (0, 1, 17, 65_536, 65_537, 200_000)] + [np.full((3, 5), 2.0, np.float32)]
    assert _core.read_probe(arrays) == sum(a.size for a in arrays) + 15
    assert _core.read_probe(arrays[4]) == 65_537  # one array, as the 512 MiB probe takes it
    assert _core.read_probe([]) == 0.0
    for refused in ([np.ones(4)], [np.ones((4, 4), np.float32)[:, ::2]], [[1.0, 2.0]]):
        with pytest.raises(TypeError, match="C-contiguous, aligned float32"):
            _core.read_probe(refused)
    gradients = make_gradients("many-small")
    (case,) = make_cases("many-small", gradients, ("grad_stats",))
    # float32 lanes: each value's rounding is below 2^-24 of the running lane sums it joins.
    magnitude = sum(float(np.abs(a).sum(dtype=np.float64)) for a in gradients.values())
    expected = sum(float(a.sum(dtype=np.float64)) for a in gradients.values())
    assert case.implementations["plain read"]() == pytest.approx(expected, abs=1e-5 * magnitude)
