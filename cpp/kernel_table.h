// The per-target kernel table: every SIMD target (baseline, avx2, avx512)
// compiles the same kernel sources into its own namespace and exports one
// KernelTable; dispatch.cpp picks one at import. Kernels work on one
// contiguous piece of one tensor; multi_tensor/plan.h splits lists into pieces.
#pragma once
#include <cstdint>

#include "dtype.h"

namespace gradguard {

// Streaming reads ask for the cache line this many bytes ahead (within the
// piece they read), on the targets whose isa/*.inc sets kSoftwarePrefetch:
// on Zen 3 (AVX2), with the hardware prefetcher alone, a core's reads in the
// reductions stayed ~25% below what they reach with it (A/B in
// tools/ab_bench.py). The read probe does the same, so that it stays the
// fastest read loop it is meant to be.
constexpr int64_t kPrefetchBytes = 8192;

// Which power sum a norm pass accumulates.
enum class NormKind : int {
  l2 = 0,       // sum x^2
  l1 = 1,       // sum |x|
  linf = 2,     // max |x| (the power sum is sum |x|, kept only to carry NaN)
  general = 3,  // sum |x|^p
};

// Partial result of a norm pass over one piece, float64 whatever the dtype.
// power_sum is NaN exactly when the piece holds a NaN. max_abs is tracked only
// where it is needed (float64 input, the inf-norm, a general p): for float32,
// fp16 and bf16 input the float64 power sums of order 1 and 2 can neither
// overflow (each square is below 1.2e77) nor underflow (above 2e-90), so
// there, power_sum is inf exactly when the piece holds an inf.
struct NormPartial {
  double power_sum = 0.0;
  double max_abs = 0.0;       // meaningful only when max_tracked; may be NaN if the piece holds NaN
  bool max_tracked = false;
};

// Partial statistics of one piece, over its finite entries (see
// stats_kernel for what is accumulated in which precision). The squared
// deviations are taken around `shift` (the piece's first finite value on the
// exact path) so the variance does not cancel catastrophically when |mean| >>
// std; the float32 fast path, taken only while |mean| <= std, has shift 0.
struct StatsPartial {
  int64_t count = 0;        // elements in the piece
  int64_t finite = 0;       // finite elements
  int64_t nan = 0;
  int64_t zero = 0;
  double shift = 0.0;
  double sum_of_squares = 0.0;  // sum x^2
  double square_terms = 0.0;    // the magnitude of the terms sum_of_squares was formed from
  double shifted_sum = 0.0;     // sum (x - shift)
  double shifted_sumsq = 0.0;   // sum (x - shift)^2
  double abs_sum = 0.0;         // sum |x|
  double min = 0.0;             // +inf when no finite entry
  double max = 0.0;             // -inf when no finite entry
};

// Layer norm / RMS norm over rows of `features` elements (one row per call
// of the row loop; rows are independent, so results never depend on threads).
// weight/bias, mean/rstd and the chunk partials are in the compute type C
// (float32, or float64 for float64 input); x, residual, residual_sum, y, dy, dx in the
// tensor's dtype. A null pointer means "absent".
struct NormalizationForward {
  const void* x;
  const void* residual;  // residual_sum = x + residual is normalised, and written out
  void* residual_sum;
  const void* weight;
  const void* bias;
  void* y;
  void* mean;  // layer norm only
  void* rstd;
  int64_t rows;
  int64_t features;
  double eps;
  bool rms;
  bool stream_output;  // write y with non-temporal stores (large outputs)
};

struct NormalizationBackward {
  const void* dy;
  const void* x;
  const void* mean;  // layer norm only
  const void* rstd;
  const void* weight;
  void* dx;
  int64_t rows;
  int64_t features;
  bool rms;
  bool stream_output;  // write dx with non-temporal stores (large outputs)
};

using NormalizationForwardFn = void (*)(const NormalizationForward& args, int64_t first_row, int64_t end_row);
// Accumulates sum_rows dy * xhat into dweight_partial and sum_rows dy into
// dbias_partial (either may be null) for rows [first_row, end_row).
using NormalizationBackwardFn = void (*)(const NormalizationBackward& args, int64_t first_row, int64_t end_row,
                                         void* dweight_partial, void* dbias_partial);

// One optimiser update over a piece of a parameter, its gradient and its
// state buffers (torch.optim's formulas). Every gradient is multiplied by
// grad_scale first: the clip coefficient times the inverse loss scale, folded
// into the optimiser's own pass.
enum class OptimizerKind : int { sgd = 0, adam = 1, rmsprop = 2 };

struct OptimizerStep {
  OptimizerKind kind;
  double grad_scale;
  double lr;
  double weight_decay;
  bool decoupled_weight_decay;  // AdamW: p *= 1 - lr * weight_decay
  double momentum;              // SGD, RMSprop
  double dampening;             // SGD
  bool nesterov;                // SGD
  bool first_step;              // SGD: the momentum buffer starts as the gradient
  double beta1, beta2, eps;     // Adam (eps also RMSprop)
  bool amsgrad;
  double step_size;             // Adam: lr / (1 - beta1^t)
  double bias_correction2_sqrt; // Adam: sqrt(1 - beta2^t)
  double alpha;                 // RMSprop
  bool centered;                // RMSprop
};

// state: SGD {momentum}; Adam {exp_avg, exp_avg_sq, max_exp_avg_sq};
// RMSprop {square_avg, momentum_buffer, grad_avg}; unused ones are null.
// norms: null, or two float64 slots that receive sum (p_new - p_old)^2 and sum p_new^2.
using OptimizerFn = void (*)(const OptimizerStep& step, void* param, const void* grad, void* const* state,
                             int64_t count, double* norms);
// data *= factor, returning whether any input value was NaN or inf.
using ScaleCheckFn = bool (*)(void* data, int64_t count, double factor);

// Columns [first_column, end_column) of a (rows, columns) buffer: add the
// float64 sums of squares down each column into sums[column] / multiply each
// column by factors[column]. (AGC's unit-wise norms for output-last layouts.)
using ColumnSquaresFn = void (*)(const void* data, int64_t rows, int64_t columns, int64_t first_column,
                                 int64_t end_column, double* sums);
using ScaleColumnsFn = void (*)(void* data, int64_t rows, int64_t columns, int64_t first_column, int64_t end_column,
                                const double* factors);

using NormFn = NormPartial (*)(const void* data, int64_t count, NormKind kind, double p, double scale);
using StatsFn = StatsPartial (*)(const void* data, int64_t count);
using ScaledStatsFn = StatsPartial (*)(const void* data, int64_t count, double scale);
using ScaleFn = void (*)(void* data, int64_t count, double factor);
using ClampFn = void (*)(void* data, int64_t count, double low, double high);

struct KernelTable {
  const char* target;  // "baseline", "avx2", "avx512"
  NormFn norm[kNumDTypes];
  StatsFn stats[kNumDTypes];
  ScaledStatsFn scaled_stats[kNumDTypes];
  ScaleFn scale[kNumDTypes];
  ClampFn clamp[kNumDTypes];
  NormalizationForwardFn normalization_forward[kNumDTypes];
  NormalizationBackwardFn normalization_backward[kNumDTypes];
  // [parameter dtype: float32, float64][gradient dtype]; null where the pair makes no sense.
  OptimizerFn optimizer[2][kNumDTypes];
  ScaleCheckFn scale_check[kNumDTypes];
  ColumnSquaresFn column_squares[kNumDTypes];
  ScaleColumnsFn scale_columns[kNumDTypes];
};

namespace baseline { const KernelTable& kernel_table(); }
#if defined(__x86_64__)
namespace avx2 { const KernelTable& kernel_table(); }
namespace avx512 { const KernelTable& kernel_table(); }
#endif

}  // namespace gradguard
