"""SIMD selection, threads, concurrent callers, fork."""

import multiprocessing
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import gradguard as gg
from conftest import run_python
from gradguard import _core


def test_show_config_prints_target_threads_compiler(capsys):
    gg.show_config()
    out = capsys.readouterr().out
    assert f"simd_target       {gg.simd_target()}" in out
    assert "threads" in out and "compiler" in out


def test_import_time_target_is_the_best_supported():
    if os.environ.get("GRADGUARD_SIMD"):
        pytest.skip("GRADGUARD_SIMD is set for this run")
    assert gg.simd_target() == _core.supported_targets()[0]


@pytest.mark.parametrize("cap", ["baseline", "avx2", "avx512"])
def test_environment_variable_caps_the_level(cap):
    result = run_python("import gradguard as gg; print(gg.simd_target())", GRADGUARD_SIMD=cap)
    assert result.returncode == 0, result.stderr
    supported = _core.supported_targets()
    order = _core.compiled_targets()
    expected = next(t for t in order[order.index(cap) :] if t in supported)
    assert result.stdout.strip() == expected


def test_unknown_environment_value_fails_the_import_clearly():
    result = run_python("import gradguard", GRADGUARD_SIMD="sse9")
    assert result.returncode != 0 and "GRADGUARD_SIMD='sse9'" in result.stderr


def test_use_target_refuses_unknown_names():
    with pytest.raises(ValueError, match="unknown SIMD target"):
        _core.use_target("neon")


def test_thread_count_round_trip_and_environment():
    before = gg.get_num_threads()
    try:
        gg.set_num_threads(3)
        assert gg.get_num_threads() == 3
    finally:
        gg.set_num_threads(before)
    result = run_python("import gradguard as gg; print(gg.get_num_threads())", GRADGUARD_NUM_THREADS="1")
    assert result.stdout.strip() == "1"


def test_concurrent_python_threads_get_the_same_answers():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(n).astype(np.float32) for n in (1000, 300_000, 70_001)]
    expected_norm = gg.global_norm(arrays)
    expected_std = gg.grad_stats(arrays).std

    def worker(seed):
        local = [a.copy() for a in arrays]
        mismatches = 0
        for _ in range(30):
            if gg.global_norm(arrays) != expected_norm or not np.array_equal(gg.grad_stats(arrays).std, expected_std):
                mismatches += 1
            gg.clip_by_global_norm(local, 1.0)
        return mismatches, gg.global_norm(local)

    # Results (and any exception) come back to this thread through the futures:
    # an assertion inside a worker thread would only be a warning.
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = [future.result() for future in [pool.submit(worker, seed) for seed in range(6)]]
    for mismatches, clipped_norm in results:
        assert mismatches == 0
        assert abs(clipped_norm - 1.0) < 1e-5


def _norm_in_child(queue):
    queue.put(gg.global_norm([np.ones(1_000_000, np.float32)]))


def test_pool_survives_fork():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    gg.global_norm([np.ones(1_000_000, np.float32)])  # the pool is running before the fork
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_norm_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0 and queue.get(timeout=5) == 1000.0


def test_torch_and_gradguard_in_one_process():
    torch = pytest.importorskip("torch")
    tensor = torch.ones(1_000_000)
    torch.set_num_threads(2)
    assert gg.global_norm([tensor.numpy()]) == 1000.0
    assert float(tensor.sum()) == 1_000_000.0


def test_one_version_from_pyproject_to_the_package():
    from importlib.metadata import version

    assert gg.__version__ == _core.__version__ == version("gradguard")


def test_set_num_threads_that_fails_part_way_keeps_the_truth():
    result = run_python("""
        import resource, numpy as np, gradguard as gg
        gg.set_num_threads(2)
        with open("/proc/self/statm") as handle:
            used = int(handle.read().split()[0]) * resource.getpagesize()
        # room for a few thread stacks only
        resource.setrlimit(resource.RLIMIT_AS, (used + (96 << 20), resource.RLIM_INFINITY))
        try:
            gg.set_num_threads(5000)
        except RuntimeError as error:
            print("refused:", error)
        print(gg.get_num_threads())
        print(gg.global_norm([np.ones(1_000_000, np.float32)]))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("refused:")
    assert lines[1] == "2" and float(lines[2]) == 1000.0
