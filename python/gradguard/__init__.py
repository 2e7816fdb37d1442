"""gradguard: numerically healthy training on NumPy buffers.

Fused multi-tensor global-norm clipping, one-pass gradient statistics, and
layer/RMS norm forward and backward, with a
C++17 core (SIMD chosen at run time, threads, GIL released). Any framework can
use it through NumPy views (a CPU torch tensor's ``.numpy()`` shares memory).
"""

import os as _os

from . import _core, init, optim
from .adaptive import AutoClip, ZClip
from .agc import agc
from .amp import LossScaler, unscale_
from .clip import (
    CLIP_EPS,
    ClipReport,
    NonFiniteNormError,
    clip_by_global_norm,
    clip_by_norm,
    clip_by_value,
    clip_coefficient,
    clip_with_norm_,
    global_norm,
)
from .config import config, get_num_threads, set_num_threads, show_config, simd_target
from .guard import Guard, GuardAction
from .monitor import Finding, GradientMonitor, MonitorSettings
from .norm import layer_norm, layer_norm_backward, rms_norm, rms_norm_backward
from .partials import (
    PIECE_ELEMENTS,
    NormPartials,
    RescaledPartialsNeeded,
    StatsPartials,
    combine_norm_partials,
    combine_stats_partials,
    norm_partials,
    shard_bounds,
    stats_partials,
)
from .stats import STATS_FIELDS, GradStats, grad_stats

__version__ = _core.__version__

if _os.environ.get("GRADGUARD_NUM_THREADS"):
    set_num_threads(int(_os.environ["GRADGUARD_NUM_THREADS"]))

__all__ = [
    "PIECE_ELEMENTS",
    "NormPartials",
    "StatsPartials",
    "RescaledPartialsNeeded",
    "combine_norm_partials",
    "combine_stats_partials",
    "norm_partials",
    "stats_partials",
    "shard_bounds",
    "global_norm",
    "clip_by_global_norm",
    "clip_coefficient",
    "CLIP_EPS",
    "clip_with_norm_",
    "clip_by_norm",
    "clip_by_value",
    "ClipReport",
    "NonFiniteNormError",
    "grad_stats",
    "GradStats",
    "STATS_FIELDS",
    "layer_norm",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_backward",
    "init",
    "optim",
    "unscale_",
    "LossScaler",
    "GradientMonitor",
    "Finding",
    "MonitorSettings",
    "Guard",
    "GuardAction",
    "AutoClip",
    "ZClip",
    "agc",
    "set_num_threads",
    "get_num_threads",
    "simd_target",
    "config",
    "show_config",
]
