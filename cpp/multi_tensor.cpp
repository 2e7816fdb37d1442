#include "multi_tensor.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>

#include "dispatch.h"
#include "parallel.h"

namespace gradguard {
namespace {

struct Piece {
  int64_t tensor;
  int64_t offset;
  int64_t count;
};

struct Plan {
  std::vector<Piece> pieces;
  std::vector<int64_t> task_starts;  // task t covers pieces [task_starts[t], task_starts[t+1])
  std::vector<int64_t> tensor_first_piece;  // tensor i's pieces start here (size tensors + 1)
  int64_t tasks() const { return static_cast<int64_t>(task_starts.size()) - 1; }
};

// Plans and per-piece buffers are thread_local and reused: a call over
// thousands of small tensors must not pay page faults on freshly mapped
// buffers (hundreds of KiB each) every time. Each buffer is used by one
// function at a time; concurrent callers have their own.
const Plan& make_plan(const std::vector<TensorRef>& tensors, Plan& plan) {
  plan.pieces.clear();
  plan.task_starts.clear();
  plan.tensor_first_piece.clear();
  plan.tensor_first_piece.reserve(tensors.size() + 1);
  int64_t task_elements = 0;
  plan.task_starts.push_back(0);
  for (size_t index = 0; index < tensors.size(); ++index) {
    plan.tensor_first_piece.push_back(static_cast<int64_t>(plan.pieces.size()));
    const int64_t count = tensors[index].count;
    // A shard that starts off the grid gets a short first piece.
    const int64_t first_room = kPieceElements - tensors[index].grid_offset % kPieceElements;
    for (int64_t offset = 0, room = first_room; offset < count; offset += room, room = kPieceElements) {
      const int64_t piece_count = std::min(room, count - offset);
      plan.pieces.push_back({static_cast<int64_t>(index), offset, piece_count});
      task_elements += piece_count;
      if (task_elements >= kPieceElements) {
        plan.task_starts.push_back(static_cast<int64_t>(plan.pieces.size()));
        task_elements = 0;
      }
    }
  }
  plan.tensor_first_piece.push_back(static_cast<int64_t>(plan.pieces.size()));
  if (plan.task_starts.back() != static_cast<int64_t>(plan.pieces.size()))
    plan.task_starts.push_back(static_cast<int64_t>(plan.pieces.size()));
  return plan;
}

// Scratch kept between calls is bounded: a call over more pieces than this
// (a million tiny arrays) releases its buffers when it ends, instead of
// leaving hundreds of MiB resident in every thread that made such a call.
constexpr size_t kKeptPieces = size_t(1) << 16;

void release_if_large(Plan& plan) {
  if (plan.pieces.capacity() > kKeptPieces || plan.tensor_first_piece.capacity() > kKeptPieces) plan = Plan();
}

template <class T> void release_if_large(std::vector<T>& buffer) {
  if (buffer.capacity() > kKeptPieces) std::vector<T>().swap(buffer);
}

// Releases the given thread_local buffers (if large) when the call returns or throws.
template <class... Buffers>
class ReleaseIfLarge {
 public:
  explicit ReleaseIfLarge(Buffers&... buffers) : buffers_(buffers...) {}
  ~ReleaseIfLarge() { std::apply([](auto&... buffer) { (release_if_large(buffer), ...); }, buffers_); }

 private:
  std::tuple<Buffers&...> buffers_;
};

inline const char* piece_address(const TensorRef& tensor, int64_t offset) {
  return static_cast<const char*>(tensor.data) + offset * element_size(tensor.dtype);
}

// Small tensors are separate allocations, each too short for the hardware
// prefetcher to lock on: fetch the next piece while this one is processed
// (up to 4 KiB of it; longer pieces stream fine on their own).
inline void prefetch_piece(const std::vector<TensorRef>& tensors, const Plan& plan, int64_t index) {
  if (index >= static_cast<int64_t>(plan.pieces.size())) return;
  const Piece& piece = plan.pieces[index];
  const TensorRef& tensor = tensors[piece.tensor];
  const int64_t bytes = piece.count * element_size(tensor.dtype);
  if (bytes > 4096) return;
  const char* start = piece_address(tensor, piece.offset);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(start + offset);
}

// Runs body(piece) for every piece, tasks spread over the pool. With
// `backwards`, tasks are taken last-first: a write pass that follows a read
// pass then starts on the data the read pass left in the cache.
template <class Body>
void for_each_piece(const std::vector<TensorRef>& tensors, const Plan& plan, bool backwards, const Body& body) {
  const int64_t tasks = plan.tasks();
  parallel_for(tasks, [&](int64_t task) {
    const int64_t chosen = backwards ? tasks - 1 - task : task;
    for (int64_t piece = plan.task_starts[chosen]; piece < plan.task_starts[chosen + 1]; ++piece) {
      prefetch_piece(tensors, plan, piece + 1);
      body(piece);
    }
  });
}

// Apex's multi_tensor_apply on the CPU, written once: runs
// body(index, piece, tensor, address) for every piece of `plan` over the
// pool, with `address` the piece's first element.
template <class Body>
void apply_to_pieces(const std::vector<TensorRef>& tensors, const Plan& plan, bool backwards, const Body& body) {
  for_each_piece(tensors, plan, backwards, [&](int64_t index) {
    const Piece& piece = plan.pieces[index];
    const TensorRef& tensor = tensors[piece.tensor];
    body(index, piece, tensor, static_cast<char*>(tensor.data) + piece.offset * element_size(tensor.dtype));
  });
}

// The same after planning `tensors` into `plan` (the caller's reusable buffer).
template <class Body>
const Plan& multi_tensor_apply(const std::vector<TensorRef>& tensors, Plan& plan, bool backwards, const Body& body) {
  make_plan(tensors, plan);
  apply_to_pieces(tensors, plan, backwards, body);
  return plan;
}

// Every piece's norm partial, of |x| * scale_per_tensor[t], into `partials` (one slot a piece).
void piece_norms(const std::vector<TensorRef>& tensors, const Plan& plan, NormOrder order,
                 const std::vector<double>& scale_per_tensor, std::vector<NormPartial>& partials) {
  const KernelTable& kernels = active_kernels();
  partials.resize(plan.pieces.size());
  apply_to_pieces(tensors, plan, false, [&](int64_t index, const Piece& piece, const TensorRef& tensor, char* address) {
    partials[index] = kernels.norm[static_cast<int>(tensor.dtype)](address, piece.count, order.kind, order.p,
                                                                   scale_per_tensor[piece.tensor]);
  });
}

// The end of the run of `pieces` (sorted by tensor) that starts at `first` and belongs to `tensor`.
template <class Pieces>
size_t end_of_tensor(const Pieces& pieces, size_t first, int64_t tensor) {
  while (first < pieces.size() && pieces[first].tensor == tensor) ++first;
  return first;
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

namespace {

// The rare path's per-tensor scale: s_t close to 1/m_t, m_t the tensor's largest |x|.
// For p = 1 and 2 it is a power of two (exact); for other p it is 1/m_t itself,
// so that the largest term is 1 and (|x| s_t)^p can neither overflow nor
// underflow to nothing however large p is.
double scale_for(double max_abs, NormOrder order) {
  if (!(max_abs > 0.0)) return 1.0;
  const double power_of_two = std::ldexp(1.0, std::clamp(-std::ilogb(max_abs), -1000, 1000));
  if (order.kind == NormKind::general && std::isfinite(1.0 / max_abs)) return 1.0 / max_abs;
  return power_of_two;
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

std::vector<double> agc_factors(const std::vector<double>& weight_norms, const std::vector<double>& grad_norms,
                                double clipping, double eps) {
  // The floor under ||G_u||: timm's and Optax's 1e-6, which only matters for
  // clipping = 0 (a limit of 0 clips every unit to 0).
  constexpr double kGradNormFloor = 1e-6;
  std::vector<double> factors(grad_norms.size());
  for (size_t unit = 0; unit < grad_norms.size(); ++unit) {
    const double limit = clipping * std::max(weight_norms[unit], eps);
    const double grad_norm = grad_norms[unit];
    // NaN norms fall through to the division and give NaN, as in both references.
    factors[unit] = grad_norm < limit ? 1.0 : limit / (grad_norm < kGradNormFloor ? kGradNormFloor : grad_norm);
  }
  return factors;
}

void scale_tensors(const std::vector<TensorRef>& tensors, double factor) {
  scale_tensors(tensors, std::vector<double>(tensors.size(), factor));
}

void scale_tensors(const std::vector<TensorRef>& tensors, const std::vector<double>& factors) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  const ReleaseIfLarge release(reusable_plan);
  multi_tensor_apply(tensors, reusable_plan, true, [&](int64_t, const Piece& piece, const TensorRef& tensor, char* address) {
    const double factor = factors[piece.tensor];
    if (factor != 1.0) kernels.scale[static_cast<int>(tensor.dtype)](address, piece.count, factor);
  });
}

void clamp_tensors(const std::vector<TensorRef>& tensors, double low, double high) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  const ReleaseIfLarge release(reusable_plan);
  multi_tensor_apply(tensors, reusable_plan, false, [&](int64_t, const Piece& piece, const TensorRef& tensor, char* address) {
    kernels.clamp[static_cast<int>(tensor.dtype)](address, piece.count, low, high);
  });
}

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

// The rescue pass's scale for values whose largest |x| is max_abs: a power of two.
double stats_scale(double max_abs) {
  return max_abs > 0.0 ? std::ldexp(1.0, std::clamp(-std::ilogb(max_abs), -1000, 1000)) : 1.0;
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
    scales.push_back(stats_scale(largest_magnitude(out, tensor)));
  }
  Plan plan;
  make_plan(subset, plan);
  std::vector<StatsPartial> partials(plan.pieces.size());
  apply_to_pieces(subset, plan, false, [&](int64_t index, const Piece& piece, const TensorRef& tensor, char* address) {
    partials[index] = kernels.scaled_stats[static_cast<int>(tensor.dtype)](address, piece.count, scales[piece.tensor]);
  });
  for (size_t index = 0; index < chosen.size(); ++index) {
    const int64_t first = plan.tensor_first_piece[index], end = plan.tensor_first_piece[index + 1];
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
  const int64_t tasks = plan.tasks();
  parallel_for(tasks, [&](int64_t task) {
    const int64_t first = plan.task_starts[task], last = plan.task_starts[task + 1];
    for (int64_t index = first; index < last; ++index) {
      prefetch_piece(tensors, plan, index + 1);
      const Piece& piece = plan.pieces[index];
      const TensorRef& tensor = tensors[piece.tensor];
      partials[index] =
          kernels.stats[static_cast<int>(tensor.dtype)](piece_address(tensor, piece.offset), piece.count);
      const int64_t tensor_first = plan.tensor_first_piece[piece.tensor];
      const int64_t tensor_end = plan.tensor_first_piece[piece.tensor + 1];
      if (index + 1 == tensor_end && tensor_first >= first)
        finish_tensor_stats(&partials[tensor_first], tensor_end - tensor_first, piece.tensor, columns);
    }
  });
  std::vector<size_t> rescue;
  for (size_t tensor = 0; tensor < tensors.size(); ++tensor) {
    const int64_t tensor_first = plan.tensor_first_piece[tensor];
    const int64_t tensor_end = plan.tensor_first_piece[tensor + 1];
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
  apply_to_pieces(tensors, plan, false, [&](int64_t index, const Piece& piece, const TensorRef& tensor, char* address) {
    StatsPartialOfPiece& partial = pieces[index];
    partial.tensor = piece.tensor;
    partial.offset = tensor.grid_offset + piece.offset;
    partial.dtype = tensor.dtype;
    partial.fast = kernels.stats[static_cast<int>(tensor.dtype)](address, piece.count);
  });
  if (!rescaled) return pieces;
  std::vector<double> scales(tensors.size(), 0.0);  // the shard's largest finite |x| first
  for (size_t index = 0; index < pieces.size(); ++index) {
    const StatsPartial& fast = pieces[index].fast;
    if (fast.finite == 0) continue;
    double& largest = scales[plan.pieces[index].tensor];
    largest = std::max({largest, std::fabs(fast.min), std::fabs(fast.max)});
  }
  for (double& scale : scales) scale = stats_scale(scale);
  apply_to_pieces(tensors, plan, false, [&](int64_t index, const Piece& piece, const TensorRef& tensor, char* address) {
    StatsPartialOfPiece& partial = pieces[index];
    partial.rescaled = true;
    partial.scale = scales[piece.tensor];
    partial.scaled = kernels.scaled_stats[static_cast<int>(tensor.dtype)](address, piece.count, partial.scale);
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
      const double scale = stats_scale(max_abs);
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

void optimizer_step(const std::vector<OptimizerTensor>& tensors, const OptimizerStep& step, StepNorms* norms) {
  const KernelTable& kernels = active_kernels();
  std::vector<TensorRef> refs;
  refs.reserve(tensors.size());
  for (const auto& tensor : tensors) refs.push_back({tensor.param, tensor.count, tensor.param_dtype});
  static thread_local Plan reusable_plan;
  static thread_local std::vector<double> reusable_partials;
  std::vector<double>& partials = reusable_partials;  // two per piece, the caller's buffer also in the workers
  const ReleaseIfLarge release(reusable_plan, partials);
  const Plan& plan = make_plan(refs, reusable_plan);
  if (norms != nullptr) partials.assign(2 * plan.pieces.size(), 0.0);
  // Pieces are planned over the parameters; gradient and state pieces sit at the same element offsets.
  apply_to_pieces(refs, plan, false, [&](int64_t index, const Piece& piece, const TensorRef&, char* param) {
    const OptimizerTensor& tensor = tensors[piece.tensor];
    const int param_size = element_size(tensor.param_dtype);
    void* state[3];
    for (int slot = 0; slot < 3; ++slot)
      state[slot] = tensor.state[slot] ? static_cast<char*>(tensor.state[slot]) + piece.offset * param_size : nullptr;
    const OptimizerFn kernel =
        kernels.optimizer[tensor.param_dtype == DType::float64 ? 1 : 0][static_cast<int>(tensor.grad_dtype)];
    kernel(tensor.settings != nullptr ? *tensor.settings : step, param,
           static_cast<const char*>(tensor.grad) + piece.offset * element_size(tensor.grad_dtype), state,
           piece.count, norms != nullptr ? &partials[2 * index] : nullptr);
  });
  if (norms == nullptr) return;
  // Piece partials folded in piece order: the norms do not depend on the thread count.
  norms->update.assign(tensors.size(), 0.0);
  norms->param.assign(tensors.size(), 0.0);
  for (size_t tensor = 0; tensor < tensors.size(); ++tensor) {
    double update = 0.0, param = 0.0;
    for (int64_t piece = plan.tensor_first_piece[tensor]; piece < plan.tensor_first_piece[tensor + 1]; ++piece) {
      update += partials[2 * piece];
      param += partials[2 * piece + 1];
    }
    norms->update[tensor] = std::sqrt(update);
    norms->param[tensor] = std::sqrt(param);
  }
}

bool scale_and_check(const std::vector<TensorRef>& tensors, double factor) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  static thread_local std::vector<char> reusable_flags;
  std::vector<char>& flags = reusable_flags;  // one per piece: no shared write
  const ReleaseIfLarge release(reusable_plan, flags);
  const Plan& plan = make_plan(tensors, reusable_plan);
  flags.assign(plan.pieces.size(), 0);
  apply_to_pieces(tensors, plan, false, [&](int64_t index, const Piece& piece, const TensorRef& tensor, char* address) {
    flags[index] = kernels.scale_check[static_cast<int>(tensor.dtype)](address, piece.count, factor);
  });
  for (char flag : flags)
    if (flag) return true;
  return false;
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

}  // namespace gradguard
