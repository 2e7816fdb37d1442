// The one rule for the rare paths' scale: values are multiplied by a power of
// two close to 1 / max|x| (exact: the multiply changes only the exponent), so
// that no sum or square over them can overflow or underflow float64.
#pragma once
#include <algorithm>
#include <cmath>

namespace gradguard {

inline double power_of_two_near_inverse(double max_abs) {
  if (!(max_abs > 0.0)) return 1.0;
  return std::ldexp(1.0, std::clamp(-std::ilogb(max_abs), -1000, 1000));
}

}  // namespace gradguard
