"""NumPy networks with hand-written backward passes, and their tasks: the
models the demo and the benchmarks train (not part of the library's API)."""

from .mlp import MLP
from .recurrent import CELLS, Recurrent
from .tasks import adding_problem, two_spirals

__all__ = ["MLP", "Recurrent", "CELLS", "two_spirals", "adding_problem"]
