// Norms over lists of tensors: a partial per piece, then the ordered fold
// (global_norm is these two steps), and the clipping rules built on them.
#include "multi_tensor/norms.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "dispatch.h"
#include "multi_tensor/elementwise.h"
#include "multi_tensor/plan.h"
#include "multi_tensor/rescale.h"

namespace gradguard {
namespace {

// Every piece's norm partial, of |x| * scale_per_tensor[t], into `partials` (one slot a piece).
void piece_norms(const std::vector<TensorRef>& tensors, const Plan& plan, NormOrder order,
                 const std::vector<double>& scale_per_tensor, std::vector<NormPartial>& partials) {
  const KernelTable& kernels = active_kernels();
  partials.resize(plan.pieces.size());
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    partials[work.index] = kernels.norm[static_cast<int>(work.tensor.dtype)](
        work.address, work.piece.count, order.kind, order.p, scale_per_tensor[work.piece.tensor]);
  });
}

bool holds_nan(const NormPartial& folded) { return std::isnan(folded.power_sum); }

bool holds_inf(const NormPartial& folded) {
  if (holds_nan(folded)) return false;
  return folded.max_tracked ? std::isinf(folded.max_abs) : std::isinf(folded.power_sum);
}

// A power sum below this may have lost digits to float64 underflow.
constexpr double kUnderflowRisk = 0x1p-900;

// True when the fast (unscaled) power sum cannot be trusted: it overflowed
// while every value was finite, or it underflowed while some value was not 0.
// Untracked sums (float32/fp16/bf16, p = 1 or 2) never need it (NormPartial).
bool needs_rescaling(const NormPartial& folded, NormOrder order) {
  if (!folded.max_tracked || order.kind == NormKind::linf || holds_nan(folded) || holds_inf(folded)) return false;
  if (std::isinf(folded.power_sum)) return true;
  return folded.max_abs > 0.0 && folded.power_sum < kUnderflowRisk;
}

// The p-th root of a power sum that was taken of |x| / multiplier (multiplier 1: unscaled).
double root_of(double power_sum, NormOrder order, double multiplier) {
  switch (order.kind) {
    case NormKind::l2: return std::sqrt(power_sum) * multiplier;
    case NormKind::l1: return power_sum * multiplier;
    default: return std::pow(power_sum, 1.0 / order.p) * multiplier;
  }
}

double power_of(double ratio, NormOrder order) {
  switch (order.kind) {
    case NormKind::l2: return ratio * ratio;
    case NormKind::l1: return ratio;
    default: return std::pow(ratio, order.p);
  }
}

}  // namespace

NormOrder NormOrder::from(double ord) {
  if (ord == 2.0) return {NormKind::l2, 2.0};
  if (ord == 1.0) return {NormKind::l1, 1.0};
  if (std::isinf(ord)) return {NormKind::linf, ord};
  return {NormKind::general, ord};
}

std::vector<int64_t> GlobalNorm::nonfinite() const {
  std::vector<int64_t> indices;
  for (size_t index = 0; index < per_tensor.size(); ++index)
    if (per_tensor[index].has_nan || per_tensor[index].has_inf) indices.push_back(static_cast<int64_t>(index));
  return indices;
}

namespace {

// The rare path's per-tensor scale: s_t close to 1/m_t, m_t the tensor's largest |x|.
// For p = 1 and 2 it is a power of two (exact); for other p it is 1/m_t itself,
// so that the largest term is 1 and (|x| s_t)^p can neither overflow nor
// underflow to nothing however large p is.
double scale_for(double max_abs, NormOrder order) {
  if (order.kind == NormKind::general && max_abs > 0.0 && std::isfinite(1.0 / max_abs)) return 1.0 / max_abs;
  return power_of_two_near_inverse(max_abs);
}

}  // namespace

std::vector<NormPartialOfPiece> norm_partials(const std::vector<TensorRef>& tensors, NormOrder order, bool rescaled) {
  static thread_local Plan reusable_plan;
  // Bound to a local reference: inside a lambda a thread_local name would mean
  // each worker's own buffer. Each pass below refills it after the last was read.
  static thread_local std::vector<NormPartial> reusable_partials;
  std::vector<NormPartial>& pass = reusable_partials;
  const ReleaseIfLarge release(reusable_plan, pass);
  const Plan& plan = make_plan(tensors, reusable_plan);
  std::vector<double> scales(tensors.size(), 1.0);
  piece_norms(tensors, plan, order, scales, pass);
  std::vector<NormPartialOfPiece> pieces(plan.pieces.size());
  for (size_t index = 0; index < pieces.size(); ++index) {
    const Piece& piece = plan.pieces[index];
    pieces[index].tensor = piece.tensor;
    pieces[index].offset = tensors[piece.tensor].grid_offset + piece.offset;
    pieces[index].count = piece.count;
    pieces[index].fast = pass[index];
  }
  if (!rescaled || order.kind == NormKind::linf) return pieces;
  // The rare path: one pass finds the maxima, one sums (|x| s)^p with s from
  // this shard's maximum (the combination brings shards to a common scale).
  const double inf = std::numeric_limits<double>::infinity();
  piece_norms(tensors, plan, {NormKind::linf, inf}, scales, pass);
  std::vector<double> shard_max(tensors.size(), 0.0);
  for (size_t index = 0; index < pieces.size(); ++index) {
    pieces[index].max_abs = pass[index].max_abs;
    double& largest = shard_max[plan.pieces[index].tensor];
    largest = std::max(largest, pass[index].max_abs);
  }
  for (size_t tensor = 0; tensor < tensors.size(); ++tensor) scales[tensor] = scale_for(shard_max[tensor], order);
  piece_norms(tensors, plan, order, scales, pass);
  for (size_t index = 0; index < pieces.size(); ++index) {
    pieces[index].rescaled = true;
    pieces[index].scale = scales[plan.pieces[index].tensor];
    pieces[index].scaled_sum = pass[index].power_sum;
  }
  return pieces;
}

namespace {

// A tensor's pieces folded in order: its unscaled partial, and (when every
// piece has them) its largest |x|, its scale s_t and sum (|x| s_t)^p, each
// piece's scaled sum brought from its shard's scale s to s_t by (s_t / s)^p
// (exactly 1 for pieces of one shard; a power of two for p = 1, 2).
struct FoldedNorm {
  NormPartial fast;
  bool rescaled = true;
  double max_abs = 0.0, scale = 1.0, scaled_sum = 0.0;
};

FoldedNorm fold_norm_pieces(const NormPartialOfPiece* first, const NormPartialOfPiece* end, NormOrder order) {
  FoldedNorm folded;
  for (const NormPartialOfPiece* piece = first; piece != end; ++piece) {
    folded.fast.power_sum += piece->fast.power_sum;
    folded.fast.max_abs = std::max(folded.fast.max_abs, piece->fast.max_abs);
    folded.fast.max_tracked = piece->fast.max_tracked;
    folded.rescaled = folded.rescaled && piece->rescaled;
    folded.max_abs = std::max(folded.max_abs, piece->max_abs);
  }
  if (!folded.rescaled) return folded;
  folded.scale = scale_for(folded.max_abs, order);
  for (const NormPartialOfPiece* piece = first; piece != end; ++piece)
    folded.scaled_sum += power_of(folded.scale / piece->scale, order) * piece->scaled_sum;
  return folded;
}

}  // namespace

GlobalNorm combine_norm_partials(const std::vector<NormPartialOfPiece>& pieces, int64_t tensor_count,
                                 NormOrder order, bool* needs_rescaled) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  *needs_rescaled = false;
  GlobalNorm result;
  result.per_tensor.resize(static_cast<size_t>(tensor_count));
  std::vector<FoldedNorm> folded(static_cast<size_t>(tensor_count));
  bool any_nan = false, any_inf = false, any_rescue = false;
  double power_sum = 0.0, max_abs = 0.0;
  size_t next_piece = 0;
  for (int64_t index = 0; index < tensor_count; ++index) {
    const size_t end_piece = end_of_tensor(pieces, next_piece, index);
    FoldedNorm& tensor = folded[index];
    tensor = fold_norm_pieces(pieces.data() + next_piece, pieces.data() + end_piece, order);
    next_piece = end_piece;
    TensorNorm& entry = result.per_tensor[index];
    entry.has_nan = holds_nan(tensor.fast);
    entry.has_inf = holds_inf(tensor.fast);
    any_nan = any_nan || entry.has_nan;
    any_inf = any_inf || entry.has_inf;
    any_rescue = any_rescue || needs_rescaling(tensor.fast, order);
    power_sum += tensor.fast.power_sum;
    max_abs = std::max(max_abs, tensor.fast.max_abs);
    entry.norm = entry.has_nan ? nan : entry.has_inf ? inf
               : order.kind == NormKind::linf ? tensor.fast.max_abs
               : root_of(tensor.fast.power_sum, order, 1.0);
  }
  if (any_nan || any_inf) {
    result.total = any_nan ? nan : inf;
    return result;
  }
  if (order.kind == NormKind::linf) {
    result.total = max_abs;
    return result;
  }
  const bool sum_unreliable = std::isinf(power_sum) || (power_sum > 0.0 && power_sum < kUnderflowRisk);
  if (!any_rescue && !sum_unreliable) {
    result.total = root_of(power_sum, order, 1.0);
    return result;
  }
  // Rare path (float64 values beyond ~1e154 or below ~1e-154, or a large p):
  // each tensor t was rescaled by s_t, the way LAPACK's nrm2 avoids overflow:
  // S_t = sum (|x| s_t)^p, norm_t = S_t^(1/p) / s_t, and with s_c the scale of
  // the tensor holding the overall maximum, total = (sum_t (s_c/s_t)^p S_t)^(1/p) / s_c.
  double largest = 0.0;
  for (const FoldedNorm& tensor : folded) {
    if (!tensor.rescaled) {
      *needs_rescaled = true;
      return result;
    }
    largest = std::max(largest, tensor.max_abs);
  }
  const double common_scale = scale_for(largest, order);
  double weighted = 0.0;
  for (size_t index = 0; index < folded.size(); ++index) {
    const FoldedNorm& tensor = folded[index];
    if (tensor.max_abs == 0.0) continue;
    if (needs_rescaling(tensor.fast, order)) result.per_tensor[index].norm = root_of(tensor.scaled_sum, order, 1.0 / tensor.scale);
    weighted += power_of(common_scale / tensor.scale, order) * tensor.scaled_sum;
  }
  result.total = root_of(weighted, order, 1.0 / common_scale);
  return result;
}

GlobalNorm global_norm(const std::vector<TensorRef>& tensors, NormOrder order) {
  bool needs_rescaled = false;
  const auto count = static_cast<int64_t>(tensors.size());
  GlobalNorm result = combine_norm_partials(norm_partials(tensors, order, false), count, order, &needs_rescaled);
  if (!needs_rescaled) return result;
  return combine_norm_partials(norm_partials(tensors, order, true), count, order, &needs_rescaled);
}

double clip_coefficient(double max_norm, double total, double eps) {
  if (total == 0.0) return 1.0;  // nothing to clip; avoids 0/0 when max_norm = eps = 0
  const double coefficient = max_norm / (total + eps);
  return coefficient < 1.0 || std::isnan(coefficient) ? coefficient : 1.0;
}

GlobalClip clip_by_global_norm(const std::vector<TensorRef>& tensors, double max_norm, NormOrder order, double eps,
                               bool error_if_nonfinite) {
  GlobalClip result;
  result.norm = global_norm(tensors, order);
  result.coefficient = clip_coefficient(max_norm, result.norm.total, eps);
  const bool refused = error_if_nonfinite && !std::isfinite(result.norm.total);
  result.clipped = !refused && result.coefficient != 1.0;
  if (result.clipped) scale_tensors(tensors, result.coefficient);
  return result;
}

double clip_with_norm(const std::vector<TensorRef>& tensors, double max_norm, double total, double eps) {
  const double coefficient = clip_coefficient(max_norm, total, eps);
  if (coefficient != 1.0) scale_tensors(tensors, coefficient);
  return coefficient;
}

std::vector<double> clip_by_norm(const std::vector<TensorRef>& tensors, double max_norm, NormOrder order,
                                 double eps) {
  const GlobalNorm norm = global_norm(tensors, order);
  std::vector<double> norms(tensors.size()), coefficients(tensors.size());
  for (size_t index = 0; index < tensors.size(); ++index) {
    norms[index] = norm.per_tensor[index].norm;
    coefficients[index] = clip_coefficient(max_norm, norms[index], eps);
  }
  scale_tensors(tensors, coefficients);
  return norms;
}

}  // namespace gradguard
