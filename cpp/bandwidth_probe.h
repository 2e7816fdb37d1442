// The read-bandwidth yardstick of `python -m gradguard bench`: kept apart from
// the kernel table the library runs on, since no operation uses it.
#pragma once
#include <vector>

#include "multi_tensor/tensor_ref.h"

namespace gradguard {

// Sum of float32 buffers by the plainest threaded read loop, cut into the
// pieces and tasks the kernels' plan makes of the same list: the fastest the
// memory holding *these* buffers can be read. (Where a buffer lies matters:
// on a VM, 4 KiB pages read ~25% slower than the 2 MiB pages NumPy asks for
// on arrays of 4 MiB and more.) Every tensor must be float32.
double read_probe(const std::vector<TensorRef>& tensors);

}  // namespace gradguard
