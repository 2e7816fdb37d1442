"""pytest-benchmark: one optimiser step with clipping on gpt2-small (float32,
2 threads): gradguard fused and unfused, torch clip_grad_norm_ + AdamW(fused)
and (foreach); one group per optimiser."""

import pytest

from gradguard.bench import make_optimizer_cases


@pytest.fixture(scope="module")
def cases():
    built, _ = make_optimizer_cases()
    return built


@pytest.mark.parametrize("implementation", ["gradguard fused", "gradguard clip+step", "torch fused", "torch foreach"])
@pytest.mark.parametrize("kind", ["adamw", "sgd", "rmsprop"])
def test_optimizer_step(benchmark, cases, kind, implementation):
    if implementation not in cases[kind]:
        pytest.skip(f"no {implementation} for {kind} here")
    benchmark.group = f"gpt2-small {kind} step with clipping"
    benchmark.pedantic(cases[kind][implementation], rounds=5, iterations=1, warmup_rounds=1)
