"""pytest-benchmark: layer norm and RMS norm, forward and backward (float32), on
the issue's shapes, gradguard against NumPy and torch, one group per norm, shape
and direction."""

import pytest

from gradguard.bench import NORM_SHAPES, make_norm_cases
from gradguard.bench.norm_cases import NORM_KINDS

IMPLEMENTATIONS = ["gradguard", "gradguard out=", "numpy", "torch"]


@pytest.fixture(scope="module")
def cases_of():
    current = {}

    def get(shape, kind):
        if (shape, kind) not in current:
            current.clear()
            current[shape, kind] = make_norm_cases(shape, kind=kind)
        return current[shape, kind]

    return get


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=[f"{r}x{f}" for r, f in NORM_SHAPES])
@pytest.mark.parametrize("kind", NORM_KINDS)
def test_norm(benchmark, cases_of, kind, shape, direction, implementation):
    cases = cases_of(shape, kind)
    if implementation not in cases[direction]:
        pytest.skip(f"{implementation} is not installed")
    benchmark.group = f"{kind}_norm {shape[0]}x{shape[1]} {direction}"
    moved = cases["nbytes"] * (2 if direction == "forward" else 3)
    benchmark.pedantic(cases[direction][implementation], rounds=10, iterations=1, warmup_rounds=1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["GB/s"] = moved / benchmark.stats.stats.median / 1e9
