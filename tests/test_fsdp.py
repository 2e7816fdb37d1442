"""FSDP2 (fully_shard) gradients, DTensors, through gradguard.torch on 2 gloo
ranks: the drop-ins equal torch's DTensor clip, the statistics are those of
each whole tensor (one all-gather of a small table, one transfer), the hook
and the guard work on them."""

import math
import os
import pickle
import socket
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.fsdp")
if not hasattr(__import__("torch.distributed.fsdp", fromlist=["fully_shard"]), "fully_shard"):
    pytest.skip("this torch has no FSDP2 (fully_shard)", allow_module_level=True)

import gradguard as gg  # noqa: E402
from gradguard._environment import environment  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import fsdp_worker  # noqa: E402

SIZE = 2


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    import torch.multiprocessing as multiprocessing

    out_dir = tmp_path_factory.mktemp("fsdp")
    with environment(GRADGUARD_NUM_THREADS="1", OMP_NUM_THREADS="1"):
        multiprocessing.spawn(fsdp_worker.worker_main, args=(SIZE, str(out_dir), _free_port()), nprocs=SIZE, join=True)
    results = []
    for rank in range(SIZE):
        with open(out_dir / f"rank{rank}.pkl", "rb") as handle:
            results.append(pickle.load(handle))
    return results


def test_the_gradients_are_dtensors(ranks):
    assert all(result["dtensor"] == "DTensor" for result in ranks)


def test_the_drop_ins_equal_torchs_dtensor_clip(ranks):
    for result in ranks:
        ours, theirs = result["total"]
        assert ours == pytest.approx(theirs, rel=1e-6)
        assert result["clip_transfers"] == 0  # the coefficient stays on the device
        for clipped in (result["clipped"], result["clamped"]):
            for name in clipped[1]:
                np.testing.assert_allclose(clipped[0][name], clipped[1][name], rtol=1e-6, atol=1e-9)
    expected = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in ranks[0]["grads_before"].values()))
    assert ranks[0]["total"][0] == pytest.approx(expected, rel=1e-6)


def test_statistics_are_of_each_whole_tensor(ranks):
    for result in ranks:
        expected = gg.grad_stats(result["stats_expected_grads"])
        ours = result["stats"]
        for field in gg.stats.STATS_FIELDS:
            np.testing.assert_allclose(getattr(ours, field), getattr(expected, field), rtol=3e-6, err_msg=field)
        assert result["stats_transfers"] == 1
        np.testing.assert_allclose(result["monitor_norm"], expected.l2, rtol=3e-6)


def test_the_hook_and_the_guard_work_on_sharded_gradients(ranks):
    for result in ranks:
        ours, theirs = result["after_hook"]
        for name in theirs:
            np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-7)
        assert np.isfinite(result["hook_norms"]).all()
        grad_norm, restored, action = result["guard"]
        assert math.isfinite(grad_norm) and restored is None and action == "restored snapshot"
        assert result["guard_restored"]
    np.testing.assert_array_equal(ranks[0]["hook_norms"], ranks[1]["hook_norms"])  # every rank sees the same
