// Element types the core reads and writes. 16-bit floats are held as raw
// 16-bit words and widened to float32 in registers (see kernels/convert.inc).
#pragma once
#include <cstdint>

namespace gradguard {

enum class DType : int { float32 = 0, float64 = 1, float16 = 2, bfloat16 = 3 };
constexpr int kNumDTypes = 4;

// Storage types for the 16-bit floats: plain words, so that no target-specific
// code is generated for them outside the kernel namespaces.
struct float16_bits { uint16_t bits; };
struct bfloat16_bits { uint16_t bits; };

inline int element_size(DType dtype) {
  switch (dtype) {
    case DType::float64: return 8;
    case DType::float32: return 4;
    default: return 2;
  }
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    default: return "bfloat16";
  }
}

}  // namespace gradguard
