"""The global-norm clip of gpt2-small's gradients: one process (pytest-benchmark
times it) against the same clip sharded over 2 gloo ranks, measured by the
ranks themselves (communication apart) and attached as extra_info. The table
form is `gradguard bench --sections sharded`."""

import pytest

pytest.importorskip("torch.distributed")

import gradguard as gg  # noqa: E402
from gradguard.bench.sharded import measure_sharded  # noqa: E402
from gradguard.bench.workloads import make_gradients  # noqa: E402


def test_sharded_clip_on_two_ranks(benchmark):
    arrays = list(make_gradients("gpt2-small").values())
    benchmark.group = "gpt2-small global-norm clip: one process vs 2 ranks"
    disabled = benchmark.disabled
    result = measure_sharded(repeat=1 if disabled else 5)
    benchmark.extra_info.update({f"rank0 {key} (s)": value for key, value in result["ranks"].items()})
    benchmark.pedantic(lambda: gg.clip_by_global_norm(arrays, 1e30), rounds=5, warmup_rounds=1)
    assert result["ranks"]["gather"] > 0
