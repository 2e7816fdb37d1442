"""The exchange every distributed call makes: rank, size and an all-gather of
Python objects over torch.distributed or mpi4py, with failures made
collective (a rank that fails raises its own error, every other rank
RankFailed) and MPI waits bounded by a timeout."""

from __future__ import annotations

import os
import time

from .._arguments import real

__all__ = ["RankFailed", "Communicator", "exchange"]

# How long an MPI rank waits for the others to arrive at a call, by default:
# two minutes, long enough for the ranks of a step to arrive (their backward
# passes differ by seconds), short enough that a dead peer is reported while
# someone is watching. A rank that stalls longer on purpose (a checkpoint
# written by one rank only) needs timeout= or GRADGUARD_MPI_TIMEOUT (seconds).
MPI_TIMEOUT_ENVIRONMENT = "GRADGUARD_MPI_TIMEOUT"
_MPI_TIMEOUT = 120.0


def default_mpi_timeout() -> float:
    """GRADGUARD_MPI_TIMEOUT seconds when set (a number > 0), else 120."""
    given = os.environ.get(MPI_TIMEOUT_ENVIRONMENT)
    if given is None:
        return _MPI_TIMEOUT
    try:
        return real(float(given), MPI_TIMEOUT_ENVIRONMENT, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"{MPI_TIMEOUT_ENVIRONMENT} must be a number of seconds > 0, not {given!r}") from None


class RankFailed(RuntimeError):
    """Another rank's part of a collective call failed (its arguments were
    refused, or it raised): this rank raises too, having written nothing.
    failures: [(rank, message)]."""

    def __init__(self, failures):
        self.failures = list(failures)
        detail = "; ".join(f"rank {rank}: {message}" for rank, message in self.failures)
        super().__init__(f"the call failed on another rank, so on every rank ({detail})")


class Communicator:
    """rank, size and an all-gather of Python objects over torch.distributed or mpi4py."""

    def __init__(self, group, timeout):
        self._mpi = group is not None and hasattr(group, "allgather") and hasattr(group, "Get_rank")
        # A timeout refused here is refused inside the first exchange (refusal()), so
        # that every rank raises at once; meanwhile the default bounds the wait.
        self.refusal = None
        self._timeout = _MPI_TIMEOUT
        try:
            self._timeout = default_mpi_timeout()
            if timeout is not None:
                if not self._mpi:
                    raise ValueError("timeout= is for MPI; torch.distributed uses its process group's timeout")
                self._timeout = real(timeout, "timeout", low=0.0, low_open=True)
        except (TypeError, ValueError) as error:
            self.refusal = error
        if self._mpi:
            self._group = group
            self.rank, self.size = group.Get_rank(), group.Get_size()
            return
        try:
            import torch.distributed as torch_distributed
        except ImportError:
            raise ValueError(
                "group must be a torch.distributed process group or an mpi4py communicator (torch is not installed)"
            ) from None
        if not torch_distributed.is_available() or not torch_distributed.is_initialized():
            raise ValueError(
                "no process group: call torch.distributed.init_process_group first, or pass group= "
                "(a torch.distributed process group or an mpi4py communicator)"
            )
        if group is not None and not isinstance(group, torch_distributed.ProcessGroup):
            raise TypeError(
                f"group must be a torch.distributed ProcessGroup or an mpi4py communicator, not {type(group).__name__}"
            )
        self._torch = torch_distributed
        self._group = group
        self.rank = torch_distributed.get_rank(group)
        self.size = torch_distributed.get_world_size(group)

    def all_gather(self, value):
        if self._mpi:
            self._wait_for_everyone()
            return self._group.allgather(value)
        gathered = [None] * self.size
        self._torch.all_gather_object(gathered, value, group=self._group)
        return gathered

    def _wait_for_everyone(self):
        """A non-blocking barrier polled up to the timeout: a rank that never
        arrives makes the others raise instead of blocking in the all-gather."""
        request = self._group.Ibarrier()
        deadline = time.monotonic() + self._timeout
        pause = 1e-5
        while not request.Test():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rank {self.rank}: the other ranks did not reach the call within {self._timeout} s "
                    "(the communicator cannot be used again)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 1e-2)


def exchange(comm, work):
    """Runs work() here, gathers every rank's result in rank order, and raises on
    every rank when any rank failed (the failing rank re-raises its own error)."""
    try:
        payload = (True, work())
    except Exception as error:  # noqa: BLE001 - re-raised below, after the others have heard of it
        local_error = error
        payload = (False, f"{type(error).__name__}: {error}")
    else:
        local_error = None
    gathered = comm.all_gather(payload)
    failures = [(rank, message) for rank, (ok, message) in enumerate(gathered) if not ok]
    if local_error is not None:
        raise local_error
    if failures:
        raise RankFailed(failures)
    return [value for _, value in gathered]
