"""gradguard.distributed on 2 and 4 real processes (gloo through
torch.multiprocessing, and MPI through mpi4py under mpiexec), compared with
the single-process calls bit for bit."""

import math
import os
import pickle
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

import gradguard as gg
from gradguard import distributed as ggd
from gradguard._environment import environment

sys.path.insert(0, os.path.dirname(__file__))
import distributed_worker as worker  # noqa: E402

STATS_FIELDS = ("numel", "mean", "std", "abs_mean", "l2", "min", "max", "n_nan", "n_inf", "n_zero")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _load(out_dir, size):
    results = []
    for rank in range(size):
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as handle:
            results.append(pickle.load(handle))
    return results


def _run_gloo(size, out_dir):
    torch_multiprocessing = pytest.importorskip("torch.multiprocessing")
    pytest.importorskip("torch.distributed")
    # One thread per rank: the ranks share this machine's cores.
    with environment(GRADGUARD_NUM_THREADS="1", OMP_NUM_THREADS="1"):
        for attempt in range(2):
            try:
                torch_multiprocessing.spawn(
                    worker.worker_main, args=(size, str(out_dir), _free_port()), nprocs=size, join=True
                )
                break
            except torch_multiprocessing.ProcessRaisedException as error:
                # The free port found may be taken before rank 0 binds it: try once more with another.
                if attempt or "address already in use" not in str(error).lower():
                    raise
    return _load(out_dir, size)


def _mpiexec():
    """mpiexec beside this Python (the mpich wheel puts it there), or on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.path.exists(beside) else shutil.which("mpiexec")


def _run_mpi(size, out_dir):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install 'gradguard[distributed]')")
    launcher = _mpiexec()
    if launcher is None:
        pytest.skip("no mpiexec: install an MPI (pip install mpich)")
    script = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADGUARD_NUM_THREADS="1")
    done = subprocess.run(
        [launcher, "-n", str(size), sys.executable, script, str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return _load(out_dir, size)


@pytest.fixture(
    scope="module", params=[("gloo", 2), ("gloo", 4), ("mpi", 2), ("mpi", 4)], ids=lambda p: f"{p[0]}-{p[1]}"
)
def ranks(request, tmp_path_factory):
    engine, size = request.param
    out_dir = tmp_path_factory.mktemp(f"{engine}{size}")
    results = _run_gloo(size, out_dir) if engine == "gloo" else _run_mpi(size, out_dir)
    return engine, size, results


def _same(a, b):
    return (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)) or a == b


def _assert_same_stats(actual, expected):
    for field in STATS_FIELDS:
        np.testing.assert_array_equal(getattr(actual, field), getattr(expected, field), err_msg=field)
    assert _same(actual.global_norm, expected.global_norm)


@pytest.mark.parametrize("layout", ["disjoint", "replicated", "sharded"])
@pytest.mark.parametrize("ord", [2.0, 1.0, math.inf, 3.0])
def test_global_norm_is_the_single_process_norm_bit_for_bit_on_every_rank(ranks, layout, ord):
    _, _, results = ranks
    expected = gg.global_norm(worker.model_grads(), ord)
    for rank_results in results:
        assert rank_results[f"norm/{layout}/{ord}"] == expected


def test_partials_taken_by_the_caller_combine_over_ranks_bit_for_bit(ranks):
    _, _, results = ranks
    expected_norm, expected_stats = gg.global_norm(worker.model_grads()), gg.grad_stats(worker.model_grads())
    for rank_results in results:
        assert rank_results["combine/norm"] == expected_norm
        _assert_same_stats(rank_results["combine/stats"], expected_stats)
        assert rank_results["combine/stats"].names == expected_stats.names


def test_combine_over_ranks_refuses_what_is_not_partials():
    with pytest.raises(TypeError, match="NormPartials"):
        ggd.combine_norm_over_ranks([gg.stats_partials([np.ones(3)])], group=worker.OneRank())
    with pytest.raises(TypeError, match="StatsPartials"):
        ggd.combine_stats_over_ranks([np.ones(3)], group=worker.OneRank())


@pytest.mark.parametrize("layout", ["disjoint", "replicated", "sharded"])
def test_grad_stats_are_the_single_process_stats_bit_for_bit(ranks, layout):
    _, _, results = ranks
    expected = gg.grad_stats(worker.model_grads())
    for rank_results in results:
        _assert_same_stats(rank_results[f"stats/{layout}"], expected)
        assert rank_results[f"stats/{layout}"].names == expected.names


@pytest.mark.parametrize("layout", ["disjoint", "replicated", "sharded"])
def test_clip_scales_every_rank_by_the_single_process_coefficient(ranks, layout):
    _, size, results = ranks
    grads = worker.model_grads()
    expected_total = gg.clip_by_global_norm(grads, 1.0)
    for rank, rank_results in enumerate(results):
        assert rank_results[f"clip_total/{layout}"] == expected_total
        clipped = rank_results[f"clipped/{layout}"]
        if layout == "sharded":
            expected = worker.sharded_part(grads, rank, size)[0]
        elif layout == "disjoint":
            expected = worker.disjoint_part(grads, rank, size)
        else:
            expected = grads
        assert list(clipped) == list(expected)
        for name in expected:
            np.testing.assert_array_equal(clipped[name], expected[name], err_msg=name)


def test_shards_with_explicit_offsets_and_off_the_grid(ranks):
    _, _, results = ranks
    grads = worker.model_grads()
    expected = gg.global_norm(grads)
    for rank_results in results:
        assert rank_results["norm/sharded_offsets"] == expected
        assert rank_results["norm/sharded_off_grid"] == pytest.approx(expected, rel=1e-14)


def test_the_rare_overflow_path_over_ranks(ranks):
    _, _, results = ranks
    huge = worker.model_grads(scale=1e200, dtypes=[np.float64])
    expected = gg.global_norm(huge)
    assert math.isfinite(expected) and expected > 1e200
    for rank_results in results:
        assert rank_results["norm/huge"] == expected
        _assert_same_stats(rank_results["stats/huge"], gg.grad_stats(huge))


def test_nan_on_one_rank_is_seen_on_every_rank(ranks):
    _, _, results = ranks
    nonfinite = {rank_results["stats_nan/nonfinite"] for rank_results in results}
    assert len(nonfinite) == 1 and len(nonfinite.pop()) == 1
    assert all(math.isnan(rank_results["norm/nan"]) for rank_results in results)


def test_a_refused_rank_makes_every_rank_raise_and_nothing_is_written(ranks):
    _, _, results = ranks
    for rank, rank_results in enumerate(results):
        kind, message = rank_results["refused/error"]
        if rank == 1:
            assert kind == "ValueError" and "read-only" in message or "writ" in message
        else:
            assert kind == "RankFailed" and "rank 1" in message
        assert rank_results["refused/unchanged"]


def test_sharded_optimizer_steps_match_one_process(ranks):
    _, size, results = ranks
    grads = {name: array.astype(np.float32) for name, array in worker.model_grads().items()}
    params = {name: np.linspace(-1, 1, array.size, dtype=np.float32) for name, array in grads.items()}
    optimizer = gg.optim.AdamW(params, lr=1e-2, max_grad_norm=0.5)
    for _ in range(3):
        report = optimizer.step(grads, return_report=True, grad_norm=gg.global_norm(grads))
    for rank, rank_results in enumerate(results):
        assert rank_results["optim/grad_norm"] == report.grad_norm
        expected = worker.sharded_part(params, rank, size)[0]
        for name, shard in rank_results["optim/params"].items():
            np.testing.assert_array_equal(shard, expected[name], err_msg=name)
        assert rank_results["optim/skipped"] and rank_results["optim/unchanged"]


def test_the_monitor_fed_across_ranks_sees_what_one_process_sees(ranks):
    _, _, results = ranks
    grads = {name: array.astype(np.float32) for name, array in worker.model_grads().items()}
    monitor = gg.GradientMonitor()
    for step in range(4):
        monitor.update({name: array * np.float32(0.1**step) for name, array in grads.items()})
    expected = monitor.history()
    for rank_results in results:
        history = rank_results["monitor/history"]
        assert set(history) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(np.asarray(history[key]), np.asarray(expected[key]), err_msg=key)


def test_backward_norms_of_pipeline_stages_combine_over_ranks(ranks):
    _, _, results = ranks
    if "backward/total" not in results[0]:
        pytest.skip("torch is not installed: no BackwardNorm to run on the ranks")
    for rank_results in results:
        assert rank_results["backward/total"] == rank_results["backward/expected"]
        _assert_same_stats(rank_results["backward/stats"], rank_results["backward/expected_stats"])
        assert rank_results["backward/stats"].names == rank_results["backward/expected_stats"].names


def test_a_rank_that_never_arrives_makes_the_others_raise(ranks):
    engine, _, results = ranks
    assert results[0]["timeout/error"] is not None
    assert results[0]["timeout/seconds"] < 60


def test_one_rank_equals_the_plain_calls():
    grads = worker.model_grads()
    for layout in ("disjoint", "replicated", "sharded"):
        assert ggd.global_norm(grads, group=worker.OneRank(), layout=layout) == gg.global_norm(grads)
        _assert_same_stats(ggd.grad_stats(grads, group=worker.OneRank(), layout=layout), gg.grad_stats(grads))


def test_clip_report_over_ranks():
    grads = worker.model_grads()
    grads["layer3"][5] = np.inf
    expected = gg.clip_by_global_norm(worker.copies(grads), 1.0, return_report=True)
    report = ggd.clip_by_global_norm(grads, 1.0, return_report=True, group=worker.OneRank())
    assert report == expected and report.nonfinite == ("layer3",)


def test_misuse_is_refused_clearly():
    one = worker.OneRank()
    with pytest.raises(ValueError, match="layout must be one of"):
        ggd.global_norm([np.ones(3)], group=one, layout="mirrored")
    with pytest.raises(ValueError, match="dict name -> shard"):
        ggd.global_norm([np.ones(3)], group=one, layout="sharded")
    with pytest.raises(ValueError, match="offsets are for"):
        ggd.global_norm([np.ones(3)], group=one, offsets={"a": 0})
    with pytest.raises(ValueError, match="offsets has no entry"):
        ggd.global_norm({"a": np.ones(3)}, group=one, layout="sharded", offsets={})
    with pytest.raises(ValueError, match="timeout"):
        ggd.global_norm([np.ones(3)], group=one, timeout=-1)
    with pytest.raises(ValueError, match="read-only|writ"):
        frozen = np.ones(3)
        frozen.flags.writeable = False
        ggd.clip_by_global_norm([frozen], 1.0, group=one)
    with pytest.raises(gg.NonFiniteNormError):
        ggd.clip_by_global_norm([np.array([np.nan, 1.0])], 1.0, error_if_nonfinite=True, group=one)


def test_without_a_process_group_the_error_says_what_to_do():
    dist = pytest.importorskip("torch.distributed")
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(ValueError, match="init_process_group"):
        ggd.global_norm([np.ones(3)])
    with pytest.raises(ValueError, match="init_process_group"):
        ggd.global_norm([np.ones(3)], group=object())


REFUSED_ON_THE_LAST_RANK = {
    "refuse/step": "TypeError",  # a float64 gradient for a float32 parameter
    "refuse/scaler": "TypeError",  # loss_scaler=3
    "refuse/max_norm": "ValueError",
    "refuse/ord": "ValueError",
    "refuse/timeout": "ValueError",
}


@pytest.mark.parametrize("key", sorted(REFUSED_ON_THE_LAST_RANK))
def test_a_refusal_on_one_rank_raises_on_every_rank_at_once(ranks, key):
    _, size, results = ranks
    for rank, rank_results in enumerate(results):
        failure, seconds = rank_results[key]
        expected = REFUSED_ON_THE_LAST_RANK[key] if rank == size - 1 else "RankFailed"
        assert failure == expected, (rank, failure)
        assert seconds < 10  # at once, not at the end of a timeout


@pytest.mark.parametrize("key", ["refuse/step_unchanged", "refuse/scaler_unchanged", "refuse/max_norm_unchanged"])
def test_a_refused_call_writes_nothing_on_any_rank(ranks, key):
    _, _, results = ranks
    assert all(rank_results[key] for rank_results in results)


@pytest.mark.parametrize(
    "key", ["refuse/different_max_norm", "refuse/layout", "refuse/replicated_order", "refuse/sharded_missing_name"]
)
def test_ranks_that_disagree_all_refuse(ranks, key):
    _, _, results = ranks
    for rank_results in results:
        failure, seconds = rank_results[key]
        assert failure == "ValueError" and seconds < 10


def test_a_generator_of_gradients_is_read_once(ranks):
    _, _, results = ranks
    for rank_results in results:
        assert rank_results["generator/norm"] == rank_results["generator/list_norm"]
        assert rank_results["generator/clipped_alike"] and rank_results["generator/clipped"]


def test_a_refusal_on_a_random_rank_stops_every_rank_at_once_with_nothing_written(ranks):
    """Property test: every entry point, refusals drawn at random, on a random rank."""
    _, size, results = ranks
    cases = [rank_results["random_refusals"] for rank_results in results]
    assert {case[0] for case in cases[0]} == set(worker.REFUSALS)  # every entry point was tried
    for index, case in enumerate(cases[0]):
        entry, what, chosen, error = case[:4]
        for rank in range(size):
            _, _, _, _, failure, seconds, unchanged = cases[rank][index]
            expected = error if rank == chosen else "RankFailed"
            assert failure == expected, (entry, what, chosen, rank, failure)
            assert seconds < 10, (entry, what, rank, seconds)
            assert unchanged, (entry, what, rank)


def test_the_mpi_timeout_defaults_to_two_minutes_or_the_environment(monkeypatch):
    from gradguard.distributed.communicator import Communicator

    monkeypatch.delenv("GRADGUARD_MPI_TIMEOUT", raising=False)
    assert Communicator(worker.OneRank(), None)._timeout == 120.0
    monkeypatch.setenv("GRADGUARD_MPI_TIMEOUT", "7.5")
    assert Communicator(worker.OneRank(), None)._timeout == 7.5
    assert Communicator(worker.OneRank(), 3)._timeout == 3.0
    monkeypatch.setenv("GRADGUARD_MPI_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="GRADGUARD_MPI_TIMEOUT must be a number of seconds"):
        ggd.global_norm([np.ones(3)], group=worker.OneRank())


def test_parameters_and_none_gradients_are_taken_as_torchs_clip_takes_them():
    torch = pytest.importorskip("torch")
    one = worker.OneRank()
    model = torch.nn.Linear(3, 2)
    model.weight.grad = torch.full((2, 3), 2.0, dtype=torch.float32)  # the bias has no gradient
    assert ggd.global_norm(list(model.parameters()), group=one) == pytest.approx(24**0.5)
    ggd.clip_by_global_norm(model.parameters(), 1.0, group=one)
    assert float(model.weight.grad.norm()) == pytest.approx(1.0, rel=1e-5)
    assert ggd.global_norm([np.ones(4), None], group=one) == 2.0
    params = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    optimizer = gg.optim.SGD(params, lr=0.1)
    ggd.optimizer_step(optimizer, {"a": np.ones(3, np.float32), "b": None}, group=one)
    assert (params["b"] == 1).all() and (params["a"] < 1).all()  # a None gradient skips its parameter


def test_torch_gradients_of_every_floating_dtype():
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    one = worker.OneRank()
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        grads = [torch.full((4,), 2.0, dtype=dtype), torch.zeros(3, dtype=dtype)]
        assert ggd.global_norm(grads, group=one) == 4.0
        assert ggd.grad_stats(grads, group=one).l2.tolist() == [4.0, 0.0]


@pytest.mark.parametrize("layout", ["disjoint", "replicated", "sharded"])
def test_device_gradients_over_ranks_agree_with_the_core(ranks, layout):
    """Torch tensors on the device path: statistics rows on each rank's device, gathered, combined by layout."""
    _, size, results = ranks
    if "device/clip" not in results[0]:
        pytest.skip("torch is not installed in this run")
    grads = worker.model_grads(seed=4, dtypes=[np.float32])
    expected = gg.grad_stats(grads)
    for rank_results in results:
        assert rank_results[f"device/norm/{layout}"] == pytest.approx(expected.global_norm, rel=2e-6)
        stats = rank_results[f"device/stats/{layout}"]
        assert list(stats.names) == list(grads)
        for field in STATS_FIELDS:
            actual, wanted = getattr(stats, field), getattr(expected, field)
            if field == "mean":  # a mean near 0 is judged against the spread, as in test_grad_stats
                scale = np.maximum(np.abs(expected.mean), expected.std)
                actual, wanted = actual / scale, wanted / scale
                np.testing.assert_allclose(actual, wanted, rtol=0, atol=3e-6, err_msg=field)
            else:
                np.testing.assert_allclose(actual, wanted, rtol=3e-6, err_msg=field)
    total, coefficient = results[0]["device/clip"]
    assert total == pytest.approx(expected.global_norm, rel=2e-6)
    clipped = {name: array for rank_results in results for name, array in rank_results["device/clipped"].items()}
    assert gg.global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
