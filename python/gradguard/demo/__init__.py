"""The main job and its models (not part of the library's API): deep NumPy
networks whose backward passes feed gradguard's monitor, initialisers, norms
and clipping (`gradguard demo`)."""

from .mlp import MLP, two_spirals
from .study import main

__all__ = ["main", "MLP", "two_spirals"]
