"""Gradient norms, clipping, statistics and optimiser steps across processes.

Every function here takes `group=`: a torch.distributed process group (None:
the default group, once torch.distributed.init_process_group has run) or an
mpi4py communicator. Ranks exchange mergeable partials (gg.norm_partials,
gg.stats_partials) with the engine's own all-gather and every rank combines
them in the same fixed order, so every rank gets the same result, bit for bit
the single-process one over all the gradients (see gradguard.partials).

`layout` says how the gradients are spread:

- "replicated" (data parallel, after the gradients' all-reduce): every rank
  holds every tensor, and each is counted once. Each rank reads only its
  share of the tensors (contiguous blocks, balanced by size) for the norm.
- "disjoint" (pipeline or tensor parallel): each rank holds its own tensors;
  the global order is rank order, then each rank's order.
- "sharded" (ZeRO / FSDP): each rank holds a contiguous shard of every tensor,
  flattened, in a dict name -> shard. `offsets` (name -> the shard's first
  element within the whole tensor) defaults to rank order: shard r starts
  where the shards of ranks < r with that name end. Statistics are per whole
  tensor. Bit-identical to one process when every boundary is a multiple of
  gg.PIECE_ELEMENTS (gg.shard_bounds cuts them so), to rounding otherwise.

Failures are collective: a rank whose arguments are refused raises its own
error and every other rank raises RankFailed naming it, before anything is
written anywhere. A rank that never arrives (it died or hangs) makes the
others raise when the engine's timeout expires: torch.distributed's process
group timeout (init_process_group(timeout=)), or `timeout=` here for MPI.
"""

from . import api
from .api import *  # noqa: F403 - the public calls, listed once in api.__all__
from .communicator import RankFailed
from .layout import LAYOUTS

__all__ = ["LAYOUTS", "RankFailed", *api.__all__]
