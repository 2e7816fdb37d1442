"""The main job (not part of the library's API): deep and recurrent NumPy
networks whose backward passes feed gradguard's monitor, initialisers, norms,
clipping and guard (`gradguard demo`)."""

from ..models import MLP, Recurrent, adding_problem, two_spirals
from .cli import main

__all__ = ["main", "MLP", "two_spirals", "Recurrent", "adding_problem"]
