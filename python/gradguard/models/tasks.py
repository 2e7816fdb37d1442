"""The tasks the demo's and the benchmarks' networks learn, made in code
(nothing is downloaded): two spirals for the deep MLPs, the adding problem
for the recurrent networks."""

from __future__ import annotations

import numpy as np

__all__ = ["two_spirals", "adding_problem"]


def two_spirals(points, noise=0.2, seed=0, turns=1.75):
    """Two interleaved spirals in 2-D (a classic task deep nets must bend space for)."""
    rng = np.random.default_rng(seed)
    half = points // 2
    angle = np.sqrt(rng.uniform(0, 1, half)) * turns * 2 * np.pi
    radius = angle / (turns * 2 * np.pi) * 2.0
    first = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    data = np.concatenate([first, -first]) + rng.normal(0, noise * 0.1, (2 * half, 2))
    labels = np.concatenate([np.zeros(half, np.int64), np.ones(half, np.int64)])
    order = rng.permutation(2 * half)
    return data[order].astype(np.float32), labels[order]


def adding_problem(count, length, rng, dtype=np.float32):
    """The adding problem (Hochreiter & Schmidhuber, 1997): at each of `length`
    steps a value drawn from U(0, 1) and a marker; one marker falls in the first
    half, one in the second; the target is the sum of the two marked values.
    Returns x (length, count, 2) and targets (count,). Predicting the mean (1)
    scores a mean squared error of 1/6."""
    values = rng.uniform(0.0, 1.0, (length, count))
    markers = np.zeros((length, count))
    half = length // 2
    first = rng.integers(0, half, count)
    second = rng.integers(half, length, count)
    columns = np.arange(count)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    targets = values[first, columns] + values[second, columns]
    return np.stack([values, markers], axis=2).astype(dtype), targets.astype(dtype)
