// Unit-wise adaptive gradient clipping (Brock et al. 2021, NFNets), as timm
// and Optax compute it, over a list of (weight, gradient) pairs.
#pragma once
#include <cstdint>
#include <vector>

#include "multi_tensor/tensor_ref.h"

namespace gradguard {

// The floor under ||G_u||: timm's and Optax's 1e-6, which only matters for
// clipping = 0 (a limit of 0 clips every unit to 0).
constexpr double kAgcGradNormFloor = 1e-6;

// How one tensor is cut into units: `count` rows of a (count, rest) buffer
// (first), or columns of a (rest, count) buffer.
struct AgcUnits {
  int64_t count;
  bool first;
};

// AGC's per-unit factors: limit = clipping * max(weight_norm, eps); factor = 1
// where grad_norm < limit, else limit / max(grad_norm, kAgcGradNormFloor).
std::vector<double> agc_factors(const std::vector<double>& weight_norms, const std::vector<double>& grad_norms,
                                double clipping, double eps);

// Unit-wise L2 norms of one tensor (units as AgcUnits describes them).
void unit_norms(const TensorRef& tensor, int64_t units, bool units_first, double* norms);

// Multiplies unit u of the tensor by factors[u] (same layouts as unit_norms).
void scale_units(const TensorRef& tensor, int64_t units, bool units_first, const double* factors);

// The whole list: every unit norm of weights and gradients, then each
// gradient's units scaled by their factors. Returns, per tensor, the fraction
// of its units that were clipped.
std::vector<double> agc(const std::vector<TensorRef>& params, const std::vector<TensorRef>& grads,
                        const std::vector<AgcUnits>& units, double clipping, double eps);

}  // namespace gradguard
