// A small pool of std::threads (no OpenMP: two OpenMP runtimes in one process,
// ours and torch's, can clash). Work is a count of independent tasks; results
// are written to per-task slots and reduced by the caller in task order, so
// nothing depends on how many threads ran or which ran what.
#pragma once
#include <cstdint>
#include <functional>

namespace gradguard {

// Cores this process may run on (sched_getaffinity), at least 1.
int usable_cores();

int num_threads();

// n >= 1. Takes effect for the next parallel_for.
void set_num_threads(int count);

// Runs body(task) for every task in [0, tasks) and returns when all are done.
// The calling thread takes part. When another parallel_for is already running
// (a second Python thread), this one runs its tasks on the calling thread:
// same results, no deadlock.
void parallel_for(int64_t tasks, const std::function<void(int64_t)>& body);

}  // namespace gradguard
