// The read-bandwidth yardstick of `python -m gradguard bench`: kept apart from
// the kernel table the library runs on, since no operation uses it.
#pragma once
#include <cstdint>

namespace gradguard {

// Sum of a float32 buffer by the plainest threaded read loop.
double read_probe(const float* data, int64_t count);

}  // namespace gradguard
