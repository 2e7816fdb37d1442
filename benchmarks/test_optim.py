"""pytest-benchmark: one optimiser step with clipping on gpt2-small (float32,
2 threads): gradguard fused and unfused, torch clip_grad_norm_ + AdamW(fused)
and (foreach); one group per optimiser."""
import pytest

from gradguard import _core
from gradguard.bench import make_optimizer_cases, torch


@pytest.fixture(scope="module")
def cases():
    before = _core.get_num_threads()
    _core.set_num_threads(2)
    if torch is not None:
        torch.set_num_threads(2)
    built, _ = make_optimizer_cases()
    yield built
    _core.set_num_threads(before)


@pytest.mark.parametrize("implementation", ["gradguard fused", "gradguard clip+step", "torch fused", "torch foreach"])
@pytest.mark.parametrize("kind", ["adamw", "sgd", "rmsprop"])
def test_optimizer_step(benchmark, cases, kind, implementation):
    if implementation not in cases[kind]:
        pytest.skip(f"no {implementation} for {kind} here")
    benchmark.group = f"gpt2-small {kind} step with clipping"
    benchmark.pedantic(cases[kind][implementation], rounds=5, iterations=1, warmup_rounds=1)
