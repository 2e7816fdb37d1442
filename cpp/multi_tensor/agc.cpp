#include "multi_tensor/agc.h"

#include <algorithm>
#include <cmath>

#include "dispatch.h"
#include "multi_tensor/elementwise.h"
#include "multi_tensor/norms.h"
#include "parallel.h"

namespace gradguard {

std::vector<double> agc_factors(const std::vector<double>& weight_norms, const std::vector<double>& grad_norms,
                                double clipping, double eps) {
  std::vector<double> factors(grad_norms.size());
  for (size_t unit = 0; unit < grad_norms.size(); ++unit) {
    const double limit = clipping * std::max(weight_norms[unit], eps);
    const double grad_norm = grad_norms[unit];
    // NaN norms fall through to the division and give NaN, as in both references.
    factors[unit] = grad_norm < limit ? 1.0 : limit / (grad_norm < kAgcGradNormFloor ? kAgcGradNormFloor : grad_norm);
  }
  return factors;
}

namespace {

// The rows of a (units, rest) tensor as separate tensors.
std::vector<TensorRef> rows_of(const TensorRef& tensor, int64_t units) {
  const int64_t rest = units > 0 ? tensor.count / units : 0;
  std::vector<TensorRef> rows(static_cast<size_t>(units));
  for (int64_t unit = 0; unit < units; ++unit)
    rows[unit] = {static_cast<char*>(tensor.data) + unit * rest * element_size(tensor.dtype), rest, tensor.dtype};
  return rows;
}

// Column ranges of about a piece of elements each (fixed by the shape only).
// Units along the columns (output-last layouts) cut across every contiguous
// piece, so they cannot be pieces of multi_tensor_apply's plan: each task
// owns whole columns instead, and its sums stay in one order for any thread
// count. Units along the rows do go through the plan (rows_of, global_norm).
int64_t column_step(int64_t rows, int64_t columns) {
  // At least a cache line of float32 columns per task, so that two tasks never write one line of sums.
  constexpr int64_t kMinColumnsPerTask = 16;
  return std::max<int64_t>(kMinColumnsPerTask, std::min<int64_t>(columns, kPieceElements / std::max<int64_t>(1, rows)));
}

}  // namespace

void unit_norms(const TensorRef& tensor, int64_t units, bool units_first, double* norms) {
  if (units_first) {
    const GlobalNorm norm = global_norm(rows_of(tensor, units), NormOrder::from(2.0));
    for (int64_t unit = 0; unit < units; ++unit) norms[unit] = norm.per_tensor[unit].norm;
    return;
  }
  const int64_t rows = units > 0 ? tensor.count / units : 0;
  const ColumnSquaresFn kernel = active_kernels().column_squares[static_cast<int>(tensor.dtype)];
  const int64_t step = column_step(rows, units);
  for (int64_t unit = 0; unit < units; ++unit) norms[unit] = 0.0;
  parallel_for((units + step - 1) / step, [&](int64_t task) {
    kernel(tensor.data, rows, units, task * step, std::min(units, (task + 1) * step), norms);
  });
  for (int64_t unit = 0; unit < units; ++unit) norms[unit] = std::sqrt(norms[unit]);
}

void scale_units(const TensorRef& tensor, int64_t units, bool units_first, const double* factors) {
  if (units_first) {
    scale_tensors(rows_of(tensor, units), std::vector<double>(factors, factors + units));
    return;
  }
  const int64_t rows = units > 0 ? tensor.count / units : 0;
  const ScaleColumnsFn kernel = active_kernels().scale_columns[static_cast<int>(tensor.dtype)];
  const int64_t step = column_step(rows, units);
  parallel_for((units + step - 1) / step, [&](int64_t task) {
    kernel(tensor.data, rows, units, task * step, std::min(units, (task + 1) * step), factors);
  });
}


std::vector<double> agc(const std::vector<TensorRef>& params, const std::vector<TensorRef>& grads,
                        const std::vector<AgcUnits>& units, double clipping, double eps) {
  // Every unit norm first, then the writes: a gradient is never scaled from
  // norms read after another gradient was written (params and grads are
  // separate, but this keeps the call all-or-nothing up to the writes).
  std::vector<std::vector<double>> factors(grads.size());
  for (size_t index = 0; index < grads.size(); ++index) {
    if (grads[index].count == 0) continue;
    const int64_t count = units[index].count;
    std::vector<double> weight_norms(count), grad_norms(count);
    unit_norms(params[index], count, units[index].first, weight_norms.data());
    unit_norms(grads[index], count, units[index].first, grad_norms.data());
    factors[index] = agc_factors(weight_norms, grad_norms, clipping, eps);
  }
  std::vector<double> fractions(grads.size(), 0.0);
  for (size_t index = 0; index < grads.size(); ++index) {
    if (factors[index].empty()) continue;
    int64_t clipped = 0;
    for (double factor : factors[index]) clipped += factor != 1.0;
    if (clipped > 0) scale_units(grads[index], units[index].count, units[index].first, factors[index].data());
    fractions[index] = static_cast<double>(clipped) / static_cast<double>(factors[index].size());
  }
  return fractions;
}

}  // namespace gradguard
