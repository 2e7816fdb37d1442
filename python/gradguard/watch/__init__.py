"""`gradguard watch`: any PyTorch training script under gradguard's monitor,
unmodified (torch's global optimizer hooks; gradients read before the
script's own clip). `python -m gradguard watch -- train.py --lr 3e-4`.

In a process of your own: `with gradguard.watch.watching("out"): train()`.
"""

from __future__ import annotations

import contextlib

__all__ = ["watching", "run_watched"]


def run_watched(target, arguments, **options):
    """See gradguard.watch.run.run_watched."""
    from .run import run_watched as run

    return run(target, arguments, **options)


@contextlib.contextmanager
def watching(out="gradguard-watch", **options):
    """Every torch optimiser stepped inside the block is monitored (see
    gradguard.watch.watcher.Watcher for the options); the outputs are written
    when the block ends, also by an exception. Yields the Watcher."""
    from .watcher import Watcher

    watcher = Watcher(out, **options)
    try:
        yield watcher
    finally:
        watcher.close()
