"""Fixtures shared by the tests: SIMD targets, dtypes, sizes and tolerances."""

import os
import subprocess
import sys
import textwrap

# Set before torch is imported (its OpenMP runtime reads it once): idle OpenMP
# workers sleep instead of spinning for milliseconds after each torch call,
# which on a 2-core machine took a core from the next test's work (the suite
# used twice the CPU time it needed). It reaches the tests' subprocesses too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gradguard import _core  # noqa: E402

try:
    import ml_dtypes

    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # bfloat16 is optional
    ml_dtypes = None
    BFLOAT16 = None

DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)] + ([BFLOAT16] if BFLOAT16 else [])
DTYPE_IDS = [str(d) for d in DTYPES]

# Sizes that straddle the vector widths (4/8/16), the 16-lane block, the
# 64-element stats group and the 65536-element piece.
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 1000, 65535, 65536, 65537, 200_003]

# Relative tolerance of a result accumulated in float64 from inputs of each
# dtype: the terms carry at most a few roundings of the compute type.
NORM_RTOL = {"float32": 1e-6, "float64": 1e-12, "float16": 1e-6, "bfloat16": 1e-6}
STATS_RTOL = {"float32": 2e-6, "float64": 1e-10, "float16": 2e-6, "bfloat16": 2e-6}


def _target_params():
    supported = set(_core.supported_targets())
    return [
        pytest.param(
            name, marks=() if name in supported else pytest.mark.skip(reason=f"this CPU cannot run the {name} target")
        )
        for name in _core.compiled_targets()
    ]


@pytest.fixture(params=_target_params())
def simd_target(request):
    """Runs the test on one SIMD target, then restores the import-time choice."""
    before = _core.simd_target()
    _core.use_target(request.param)
    yield request.param
    _core.use_target(before)


@pytest.fixture(params=DTYPES, ids=DTYPE_IDS)
def dtype(request):
    return request.param


def random_array(rng, size, dtype, scale=1.0):
    """Normal values representable in dtype (so the reference sees the same numbers)."""
    return (rng.standard_normal(size) * scale).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def misaligned(values, dtype=np.float32):
    """A contiguous, writable array whose data address is not a multiple of its itemsize."""
    values = np.asarray(values, dtype=dtype)
    buffer = bytearray(values.nbytes + 1)
    array = np.frombuffer(buffer, dtype=dtype, offset=1, count=values.size).reshape(values.shape)
    array[...] = values
    assert not array.flags.aligned and array.flags.c_contiguous
    return array


def run_python(code, timeout=120, **env):
    """A fresh interpreter running `code` (dedented), with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


ELEMENTS = 64


def layer_with_norm(rng, norm, zero_fraction=0.0):
    values = rng.standard_normal(ELEMENTS)
    if zero_fraction:
        values[: int(round(zero_fraction * ELEMENTS))] = 0.0
    length = np.linalg.norm(values)
    # a weight matrix's gradient (a vector's exact zeros are judged apart by the dead test)
    return (values * (norm / length) if length > 0 else values).astype(np.float32).reshape(-1, 4)
