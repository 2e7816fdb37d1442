"""Optimisers whose step folds gradient clipping and loss-scale unscaling into
their own pass (torch.optim's formulas, on NumPy parameters updated in place).

step(grads) with max_grad_norm reads the gradients once for the global norm,
then runs the update with every gradient multiplied by
min(1, max_norm / (norm + CLIP_EPS)) (and by 1/scale with a LossScaler):
clipping costs one read instead of a read and a read+write pass. Both happen
in one C++ call, which validates every array before anything is written.

Each optimiser is described once, by a settings dataclass (SGDSettings,
AdamSettings, ...): its hyperparameters with their defaults and rules, its
state buffers, and how they fill the core's OptimizerStep.
"""

from .adam import Adam, AdamSettings, AdamW, AdamWSettings
from .base import Optimizer
from .lr_scheduler import LambdaLR
from .report import StepReport
from .rmsprop import RMSprop, RMSpropSettings
from .sgd import SGD, SGDSettings

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "RMSprop",
    "StepReport",
    "LambdaLR",
    "Optimizer",
    "SGDSettings",
    "AdamSettings",
    "AdamWSettings",
    "RMSpropSettings",
]
