"""Runs the demo's runs on worker processes, with progress on stderr.

Each worker is a fresh (spawned) interpreter with one BLAS thread and one
gradguard thread: the networks are small, so two processes on two cores do
twice the work of one process with two threads, and every run computes the
same numbers wherever it lands. Records come back in plan order."""

from __future__ import annotations

import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from .._environment import environment
from ..config import set_num_threads
from .experiments import EXPERIMENTS, execute

_SINGLE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def _worker_setup():
    set_num_threads(1)


def _duration(seconds):
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """One rewritten line on a terminal (the experiment under way, its runs, the
    ETA of the whole demo); one line per finished experiment otherwise."""

    def __init__(self, runs, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.order = list(dict.fromkeys(run.experiment for run in runs))
        self.total = {key: sum(1 for run in runs if run.experiment == key) for key in self.order}
        self.done = dict.fromkeys(self.order, 0)
        self.total_cost = sum(run.cost for run in runs) or 1.0
        self.done_cost = 0.0
        self.started = time.perf_counter()
        self.finished = []

    def eta(self):
        elapsed = time.perf_counter() - self.started
        if self.done_cost <= 0:
            return math.inf
        return elapsed * (self.total_cost - self.done_cost) / self.done_cost

    def advance(self, run):
        self.done[run.experiment] += 1
        self.done_cost += run.cost
        elapsed = time.perf_counter() - self.started
        key = run.experiment
        if self.done[key] == self.total[key]:
            self.finished.append(key)
            if not self.interactive:
                print(
                    f"[{len(self.finished)}/{len(self.order)}] {EXPERIMENTS[key][0]}: {self.total[key]} runs done, "
                    f"{_duration(elapsed)} elapsed, about {_duration(self.eta())} left",
                    file=self.stream,
                    flush=True,
                )
        if self.interactive:
            current = next((k for k in self.order if self.done[k] < self.total[k]), key)
            line = (
                f"{EXPERIMENTS[current][0]}: {self.done[current]}/{self.total[current]} runs"
                f" | all: {100 * self.done_cost / self.total_cost:3.0f}%, {_duration(elapsed)}, "
                f"ETA {_duration(self.eta())}"
            )
            print(f"\r{line[:110]:<110}", end="", file=self.stream, flush=True)

    def close(self):
        if self.interactive:
            print(file=self.stream, flush=True)


def run_all(runs, jobs, progress=None):
    """Execute every run (on `jobs` processes; 1: in this process) and return
    their records in the order of `runs`."""
    progress = progress or Progress(runs)
    records = [None] * len(runs)
    # Longest first, within the experiment order: the pool stays full to the end.
    order = sorted(range(len(runs)), key=lambda i: (progress.order.index(runs[i].experiment), -runs[i].cost))
    # Every run, even with jobs=1, runs in a worker process whose BLAS is
    # single-threaded from its start: a multi-threaded BLAS may sum a matrix
    # product in another order, so records would depend on --jobs otherwise.
    context = multiprocessing.get_context("spawn")
    # The pool spawns its workers as work is submitted, so the environment they
    # inherit must stay set until every run has been submitted.
    # Spawned workers read the BLAS thread counts from the environment at import.
    with environment(**{name: "1" for name in _SINGLE_THREAD}):
        pool = ProcessPoolExecutor(max(1, min(jobs, len(runs))), mp_context=context, initializer=_worker_setup)
        try:
            futures = {pool.submit(execute, runs[index]): index for index in order}
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    try:
        for future in as_completed(futures):
            index = futures[future]
            records[index] = future.result()
            progress.advance(runs[index])
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        progress.close()
    pool.shutdown()
    return records
