// Per-tensor statistics: piece partials (count, finite/NaN/zero counts, sums
// about a shift, |x| sum, min, max) folded per tensor with Chan et al.'s merge,
// and the float64 rescue pass for magnitudes the fast path cannot hold.
#include "multi_tensor/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dispatch.h"
#include "multi_tensor/plan.h"
#include "multi_tensor/rescale.h"

namespace gradguard {
namespace {

// Folds a tensor's piece partials in piece order (Chan et al.'s pairwise
// merge of count, mean and sum of squared deviations) and writes the result.
// The partials may be of values multiplied by `scale` (the rescue pass); the
// moments are then divided by it, and only they are written.
void finish_tensor_stats(const StatsPartial* pieces, int64_t piece_count, int64_t tensor, const StatsColumns& out,
                         double scale = 1.0, bool moments_only = false) {
  int64_t count = 0, finite = 0, nan = 0, zero = 0;
  double mean = 0.0, deviations = 0.0, abs_sum = 0.0, sum_of_squares = 0.0;
  double minimum = std::numeric_limits<double>::infinity(), maximum = -minimum;
  for (int64_t index = 0; index < piece_count; ++index) {
    const StatsPartial& piece = pieces[index];
    count += piece.count;
    nan += piece.nan;
    zero += piece.zero;
    abs_sum += piece.abs_sum;
    sum_of_squares += piece.sum_of_squares;
    minimum = std::min(minimum, piece.min);
    maximum = std::max(maximum, piece.max);
    if (piece.finite == 0) continue;
    // The piece's moments from its sums around `shift`:
    // sum (x - m)^2 = sum (x - s)^2 - (sum (x - s))^2 / n.
    const double piece_count_wide = static_cast<double>(piece.finite);
    const double piece_mean = piece.shift + piece.shifted_sum / piece_count_wide;
    const double piece_deviations =
        std::max(0.0, piece.shifted_sumsq - piece.shifted_sum * piece.shifted_sum / piece_count_wide);
    const double merged = static_cast<double>(finite) + piece_count_wide;
    const double delta = piece_mean - mean;
    mean += delta * piece_count_wide / merged;
    deviations += piece_deviations + delta * delta * static_cast<double>(finite) * piece_count_wide / merged;
    finite += piece.finite;
  }
  const double nan_value = std::numeric_limits<double>::quiet_NaN();
  const double finite_wide = static_cast<double>(finite);
  out.l2[tensor] = std::sqrt(std::max(0.0, sum_of_squares)) / scale;
  out.mean[tensor] = finite > 0 ? mean / scale : nan_value;
  out.std[tensor] = finite > 0 ? std::sqrt(deviations / finite_wide) / scale : nan_value;
  out.abs_mean[tensor] = finite > 0 ? abs_sum / finite_wide / scale : nan_value;
  if (moments_only) return;
  out.numel[tensor] = count;
  out.nan[tensor] = nan;
  out.inf[tensor] = count - finite - nan;
  out.zero[tensor] = zero;
  out.min[tensor] = finite > 0 ? minimum : nan_value;
  out.max[tensor] = finite > 0 ? maximum : nan_value;
}

double largest_magnitude(const StatsColumns& columns, size_t tensor) {
  return std::max(std::fabs(columns.min[tensor]), std::fabs(columns.max[tensor]));
}

// Whether the fast statistics of a tensor whose largest finite |x| is
// `max_abs` may have overflowed or lost digits (see stats_kernel).
bool stats_need_rescue(DType dtype, double max_abs) {
  if (!(max_abs > 0.0)) return false;  // all zero, or nothing finite
  const int exponent = std::ilogb(max_abs);
  // float64: squared deviations; float32 (and bfloat16): the compute-type
  // sum of up to 16 magnitudes per lane, which overflows from 2^124.
  if (dtype == DType::float64) return exponent >= 480 || exponent < -480;
  return exponent >= 120;
}

// Whether a tensor's sum x^2, formed per piece from its shifted sums, lost
// digits to cancellation: its terms exceed the result by more than
// kCancellationLimit (the rounding error, under 2^-40 of the terms, could
// then reach 1e-10 of the result). Rare: the piece's first finite value must
// be ~11 times its root mean square or more.
bool squares_cancelled(const StatsPartial* pieces, int64_t piece_count) {
  constexpr double kCancellationLimit = 256.0;
  for (int64_t index = 0; index < piece_count; ++index)
    if (pieces[index].finite > 0 && pieces[index].square_terms > kCancellationLimit * pieces[index].sum_of_squares)
      return true;
  return false;
}

// Recomputes the moments of the listed tensors in float64 on values scaled by
// a power of two close to 1 / max|x|.
void rescue_stats(const std::vector<TensorRef>& tensors, const std::vector<size_t>& chosen, const StatsColumns& out) {
  const KernelTable& kernels = active_kernels();
  std::vector<TensorRef> subset;
  std::vector<double> scales;
  for (size_t tensor : chosen) {
    subset.push_back(tensors[tensor]);
    scales.push_back(power_of_two_near_inverse(largest_magnitude(out, tensor)));
  }
  Plan plan;
  make_plan(subset, plan);
  std::vector<StatsPartial> partials(plan.pieces.size());
  multi_tensor_apply(subset, plan, Direction::forwards, [&](const PieceWork& work) {
    partials[work.index] = kernels.scaled_stats[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count,
                                                                                    scales[work.piece.tensor]);
  });
  for (size_t index = 0; index < chosen.size(); ++index) {
    const int64_t first = plan.first_piece(index), end = plan.end_piece(index);
    finish_tensor_stats(partials.data() + first, end - first, static_cast<int64_t>(chosen[index]), out, scales[index],
                        true);
  }
}

}  // namespace

void tensor_stats(const std::vector<TensorRef>& tensors, const StatsColumns& columns) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  static thread_local std::vector<StatsPartial> reusable_partials;
  std::vector<StatsPartial>& partials = reusable_partials;  // the caller's buffer, also in the workers
  const ReleaseIfLarge release(reusable_plan, partials);
  const Plan& plan = make_plan(tensors, reusable_plan);
  partials.resize(plan.pieces.size());
  // A tensor whose pieces all lie in one task is finished by that task (in
  // parallel: thousands of small tensors); the others are finished afterwards.
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    partials[work.index] = kernels.stats[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count);
    const int64_t tensor_first = plan.first_piece(work.piece.tensor), tensor_end = plan.end_piece(work.piece.tensor);
    if (work.index + 1 == tensor_end && tensor_first >= work.task_first)
      finish_tensor_stats(&partials[tensor_first], tensor_end - tensor_first, work.piece.tensor, columns);
  });
  const int64_t tasks = plan.tasks();
  std::vector<size_t> rescue;
  for (size_t tensor = 0; tensor < tensors.size(); ++tensor) {
    const int64_t tensor_first = plan.first_piece(tensor), tensor_end = plan.end_piece(tensor);
    const int64_t* task_of_first = std::upper_bound(plan.task_starts.data(), plan.task_starts.data() + tasks + 1, tensor_first);
    const bool finished_in_task = tensor_end > tensor_first && tensor_end <= *task_of_first;
    if (!finished_in_task)
      finish_tensor_stats(partials.data() + tensor_first, tensor_end - tensor_first, static_cast<int64_t>(tensor), columns);
    if (stats_need_rescue(tensors[tensor].dtype, largest_magnitude(columns, tensor)) ||
        squares_cancelled(partials.data() + tensor_first, tensor_end - tensor_first))
      rescue.push_back(tensor);
  }
  if (!rescue.empty()) rescue_stats(tensors, rescue, columns);
}

namespace {

// A scaled piece partial taken at one power-of-two scale, brought to another
// (ratio a power of two too): every sum scales exactly, barring subnormals.
StatsPartial rescaled_by(StatsPartial piece, double ratio) {
  if (ratio == 1.0) return piece;
  piece.shift *= ratio;
  piece.shifted_sum *= ratio;
  piece.abs_sum *= ratio;
  piece.sum_of_squares *= ratio * ratio;
  piece.square_terms *= ratio * ratio;
  piece.shifted_sumsq *= ratio * ratio;
  return piece;
}

}  // namespace

std::vector<StatsPartialOfPiece> stats_partials(const std::vector<TensorRef>& tensors, bool rescaled) {
  const KernelTable& kernels = active_kernels();
  Plan plan;
  make_plan(tensors, plan);
  std::vector<StatsPartialOfPiece> pieces(plan.pieces.size());
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    StatsPartialOfPiece& partial = pieces[work.index];
    partial.tensor = work.piece.tensor;
    partial.offset = work.tensor.grid_offset + work.piece.offset;
    partial.dtype = work.tensor.dtype;
    partial.fast = kernels.stats[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count);
  });
  if (!rescaled) return pieces;
  std::vector<double> scales(tensors.size(), 0.0);  // the shard's largest finite |x| first
  for (size_t index = 0; index < pieces.size(); ++index) {
    const StatsPartial& fast = pieces[index].fast;
    if (fast.finite == 0) continue;
    double& largest = scales[plan.pieces[index].tensor];
    largest = std::max({largest, std::fabs(fast.min), std::fabs(fast.max)});
  }
  for (double& scale : scales) scale = power_of_two_near_inverse(scale);
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    StatsPartialOfPiece& partial = pieces[work.index];
    partial.rescaled = true;
    partial.scale = scales[work.piece.tensor];
    partial.scaled =
        kernels.scaled_stats[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count, partial.scale);
  });
  return pieces;
}

bool combine_stats_partials(const std::vector<StatsPartialOfPiece>& pieces, int64_t tensor_count,
                            const StatsColumns& columns) {
  std::vector<StatsPartial> fast, scaled;
  size_t next_piece = 0;
  for (int64_t tensor = 0; tensor < tensor_count; ++tensor) {
    const size_t end_piece = end_of_tensor(pieces, next_piece, tensor);
    fast.clear();
    for (size_t index = next_piece; index < end_piece; ++index) fast.push_back(pieces[index].fast);
    const auto piece_count = static_cast<int64_t>(fast.size());
    finish_tensor_stats(fast.data(), piece_count, tensor, columns);
    const double max_abs = largest_magnitude(columns, static_cast<size_t>(tensor));
    // The same rule as tensor_stats: the tensor's dtype is that of its pieces.
    const bool rescue = (piece_count > 0 && stats_need_rescue(pieces[next_piece].dtype, max_abs)) ||
                        squares_cancelled(fast.data(), piece_count);
    if (rescue) {
      const double scale = power_of_two_near_inverse(max_abs);
      scaled.clear();
      for (size_t index = next_piece; index < end_piece; ++index) {
        if (!pieces[index].rescaled) return false;
        scaled.push_back(rescaled_by(pieces[index].scaled, scale / pieces[index].scale));
      }
      finish_tensor_stats(scaled.data(), piece_count, tensor, columns, scale, true);
    }
    next_piece = end_piece;
  }
  return true;
}

double global_norm_of_stats(const double* l2, const int64_t* nan, const int64_t* inf, int64_t tensors) {
  bool any_inf = false;
  double largest = 0.0;
  for (int64_t tensor = 0; tensor < tensors; ++tensor) {
    if (nan[tensor] != 0) return std::numeric_limits<double>::quiet_NaN();
    any_inf = any_inf || inf[tensor] != 0;
    largest = std::max(largest, l2[tensor]);
  }
  if (any_inf) return std::numeric_limits<double>::infinity();
  if (largest == 0.0 || !std::isfinite(largest)) return largest;
  double sum = 0.0;
  for (int64_t tensor = 0; tensor < tensors; ++tensor) {
    const double ratio = l2[tensor] / largest;
    sum += ratio * ratio;
  }
  return largest * std::sqrt(sum);
}

}  // namespace gradguard
