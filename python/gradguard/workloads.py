"""The standard gradient shapes (shared/workloads/models.json, shipped here as
data/workloads.json) that tests and benchmarks use, so figures are comparable."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["workload_names", "workload_shapes", "make_gradients"]


@lru_cache(maxsize=1)
def _models():
    return json.loads((Path(__file__).parent / "data" / "workloads.json").read_text())


def workload_names():
    """gpt2-small, resnet50, mlp-10, many-small."""
    return list(_models())


def workload_shapes(name):
    """[(tensor name, shape tuple), ...] of one workload."""
    models = _models()
    if name not in models:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(models)}")
    return [(entry["name"], tuple(entry["shape"])) for entry in models[name]["shapes"]]


def make_gradients(name, dtype=np.float32, seed=0):
    """dict tensor name -> gradient filled from a seeded standard normal generator."""
    rng = np.random.default_rng(seed)
    gradients = {}
    for tensor_name, shape in workload_shapes(name):
        gradients[tensor_name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
    return gradients
