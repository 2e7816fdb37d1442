"""The main job (not part of the library's API): deep and recurrent NumPy
networks whose backward passes feed gradguard's monitor, initialisers, norms,
clipping and guard (`gradguard demo`)."""

from .cli import main
from .mlp import MLP, two_spirals
from .recurrent import Recurrent, adding_problem

__all__ = ["main", "MLP", "two_spirals", "Recurrent", "adding_problem"]
