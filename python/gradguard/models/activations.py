"""Activations the NumPy models share."""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    """1 / (1 + exp(-z))."""
    return 1.0 / (1.0 + np.exp(-z))
