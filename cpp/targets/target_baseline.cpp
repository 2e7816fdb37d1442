// Kernels compiled for the portable x86-64 / any-CPU baseline: SSE2 at most on x86-64, whatever the compiler's default elsewhere.
// The same kernel sources are compiled once per target, each copy inside its
// own namespace so no inline function can be shared between targets (an
// AVX-512 copy of a helper must never be picked for the baseline path). The
// standard headers come before the target pragma for the same reason.
#include <cstdint>
#include <type_traits>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "kernel_table.h"


#define GRADGUARD_HAS_F16C 0
#define GRADGUARD_FLOATS_PER_VECTOR 4
#define GRADGUARD_TARGET_NAME "baseline"

namespace gradguard {
namespace baseline {
#include "kernels/convert.inc"
#include "kernels/reduce.inc"
#include "kernels/elementwise.inc"
#include "kernels/normalization.inc"
#include "kernels/optimizer.inc"
#include "kernels/table.inc"
}  // namespace baseline
}  // namespace gradguard
