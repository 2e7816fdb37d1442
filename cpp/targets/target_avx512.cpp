// Kernels compiled for AVX-512 F+BW+DQ+VL (Skylake-SP, Ice Lake, Zen 4 and later), 512-bit vectors preferred.
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

#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,prefer-vector-width=512")
#define GRADGUARD_HAS_F16C 1
#define GRADGUARD_FLOATS_PER_VECTOR 16
#define GRADGUARD_TARGET_NAME "avx512"

namespace gradguard {
namespace avx512 {
#include "kernels/convert.inc"
#include "kernels/reduce.inc"
#include "kernels/elementwise.inc"
#include "kernels/normalization.inc"
#include "kernels/optimizer.inc"
#include "kernels/table.inc"
}  // namespace avx512
}  // namespace gradguard
