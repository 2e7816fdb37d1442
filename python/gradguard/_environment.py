"""Environment variables set for a block, for the processes it spawns (which
read thread counts and the like from the environment when they start)."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def environment(**values: str):
    """os.environ with `values` set inside the block, and as it was after it."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
