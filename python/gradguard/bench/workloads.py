"""The standard gradient shapes (shared/workloads/models.json) that tests and
benchmarks use, so figures are comparable: three real models' shape lists
(workloads.json beside this file) and many-small, which is a formula."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["workload_names", "workload_shapes", "make_gradients"]

# many-small: 4,000 vectors of 64 + (37 i mod 900) elements (2,050,300 in all),
# the per-tensor overhead case.
_MANY_SMALL_TENSORS = 4000


def _many_small():
    return [(f"p{index}", (64 + (37 * index) % 900,)) for index in range(_MANY_SMALL_TENSORS)]


@lru_cache(maxsize=1)
def _models():
    listed = json.loads((Path(__file__).parent / "workloads.json").read_text())
    return {name: [(tensor, tuple(shape)) for tensor, shape in model["shapes"]] for name, model in listed.items()}


def workload_names():
    """gpt2-small, resnet50, mlp-10, many-small."""
    return [*_models(), "many-small"]


def workload_shapes(name):
    """[(tensor name, shape tuple), ...] of one workload."""
    if name == "many-small":
        return _many_small()
    models = _models()
    if name not in models:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(workload_names())}")
    return list(models[name])


def make_gradients(name, dtype=np.float32, seed=0):
    """dict tensor name -> gradient filled from a seeded standard normal generator."""
    rng = np.random.default_rng(seed)
    gradients = {}
    for tensor_name, shape in workload_shapes(name):
        gradients[tensor_name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    return gradients
