// Operations over a list of tensors (Apex's multi_tensor_apply, on the CPU).
// Every tensor is cut into pieces at fixed offsets (multiples of
// kPieceElements), consecutive pieces are grouped into tasks of about
// kPieceElements elements (so thousands of small tensors make few tasks), each
// piece's partial result goes into its own slot, and slots are reduced in piece
// order. The pieces depend only on each tensor's size, so results do not depend
// on the thread count, nor on which other tensors share the list.
#pragma once
#include <cstdint>
#include <vector>

#include "kernel_table.h"

namespace gradguard {

// 64 Ki elements: 256 KiB of float32, a few hundred microseconds of work: big
// enough that scheduling costs nothing, small enough to balance two threads
// and to fit the L2 cache.
constexpr int64_t kPieceElements = int64_t(1) << 16;

struct TensorRef {
  void* data;
  int64_t count;
  DType dtype;
  // Where this tensor starts within a larger one it is a shard of (0 when
  // whole): pieces are cut at multiples of kPieceElements of the whole
  // tensor, so a shard whose boundaries fall on them is cut into the very
  // pieces the whole tensor would be.
  int64_t grid_offset = 0;
};

// ord as the user gave it: 2, 1, inf or any p > 0.
struct NormOrder {
  NormKind kind;
  double p;
  static NormOrder from(double ord);
};

// A tensor's norm pass, finished: the norm itself and what it saw.
struct TensorNorm {
  double norm = 0.0;
  bool has_nan = false;
  bool has_inf = false;
};

struct GlobalNorm {
  double total = 0.0;
  std::vector<TensorNorm> per_tensor;
};

// The p-norm of all elements of all tensors together (and each tensor's own).
// NaN anywhere gives NaN; otherwise inf anywhere gives inf.
GlobalNorm global_norm(const std::vector<TensorRef>& tensors, NormOrder order);

// Mergeable partials, for tensors whose elements are spread over processes.
// A partial is one piece's: it depends on that piece's elements alone, not on
// the list the tensor came in, the thread count, nor where the rest of the
// tensor is. The combine functions fold the pieces of each tensor in offset
// order and then the tensors in order, exactly as the single-process
// functions do (they are these two steps), so partials gathered from any
// number of ranks give the single-process result bit for bit, as long as
// each shard's boundaries fall on the piece grid (grid_offset).

// One piece's share of a global p-norm.
struct NormPartialOfPiece {
  int64_t tensor = 0;           // index of the whole tensor in the combined list
  int64_t offset = 0;           // first element, within the whole tensor
  int64_t count = 0;
  NormPartial fast;             // sum |x|^p (max |x| for inf), unscaled
  bool rescaled = false;        // the three below are filled
  double max_abs = 0.0;         // exact
  double scale = 1.0;           // s, close to 1 / max |x| of the shard the piece came from
  double scaled_sum = 0.0;      // sum (|x| s)^p
};

// Every piece's partial, in tensor then offset order; with `rescaled`, also
// the scaled sums that the rare overflow/underflow path combines (one more
// pass for the maxima, one for the sums).
std::vector<NormPartialOfPiece> norm_partials(const std::vector<TensorRef>& tensors, NormOrder order, bool rescaled);

// global_norm of `tensor_count` tensors from their pieces' partials, sorted by
// tensor then offset. `needs_rescaled` is set (and the result is not
// meaningful) when the rare path is needed and the partials were taken
// without `rescaled`: take them again with it.
GlobalNorm combine_norm_partials(const std::vector<NormPartialOfPiece>& pieces, int64_t tensor_count,
                                 NormOrder order, bool* needs_rescaled);

// torch's clip rule, the one used by every clipping entry point:
// coef = max_norm / (total + eps), clamped to at most 1; 1 when total is 0
// (nothing to clip); NaN when total is NaN (applied: every value turns NaN).
double clip_coefficient(double max_norm, double total, double eps);

// AGC's per-unit factors (Brock et al. 2021, as timm and Optax compute them):
// limit = clipping * max(weight_norm, eps); factor = 1 where grad_norm < limit,
// else limit / max(grad_norm, 1e-6).
std::vector<double> agc_factors(const std::vector<double>& weight_norms, const std::vector<double>& grad_norms,
                                double clipping, double eps);

// tensor[i] *= factor (factor rounded to float32 for 16/32-bit tensors).
void scale_tensors(const std::vector<TensorRef>& tensors, double factor);

// tensor[i] *= factors[i]; tensors whose factor is exactly 1 are skipped.
void scale_tensors(const std::vector<TensorRef>& tensors, const std::vector<double>& factors);

// tensor[i] = clamp(tensor[i], low, high); NaN stays NaN.
void clamp_tensors(const std::vector<TensorRef>& tensors, double low, double high);

// Per-tensor statistics, written into caller-owned columns (one entry per
// tensor). Moments are over each tensor's finite entries:
//   mean = sum x / n, std = sqrt(sum (x - mean)^2 / n), abs_mean = sum |x| / n,
//   min, max (NaN when n = 0), l2 = sqrt(sum x^2) (0 when n = 0);
// numel, nan, inf and zero count entries. l2 sums float64 squares of the
// values (as global_norm does); the moments are accurate to about 1e-7 of
// max|x| for 32/16-bit data, and tensors whose magnitudes would overflow or
// underflow the fast path are recomputed in float64 on rescaled values.
struct StatsColumns {
  int64_t* numel;
  double* mean;
  double* std;
  double* abs_mean;
  double* l2;
  double* min;
  double* max;
  int64_t* nan;
  int64_t* inf;
  int64_t* zero;
};

void tensor_stats(const std::vector<TensorRef>& tensors, const StatsColumns& columns);

// One piece's statistics partial (see the mergeable partials above); with
// `rescaled`, also the float64 pass over values multiplied by `scale`, a power
// of two near 1 / max|x| of the shard, that the rare path needs.
struct StatsPartialOfPiece {
  int64_t tensor = 0;
  int64_t offset = 0;
  DType dtype = DType::float32;
  StatsPartial fast;
  bool rescaled = false;
  double scale = 1.0;
  StatsPartial scaled;
};

std::vector<StatsPartialOfPiece> stats_partials(const std::vector<TensorRef>& tensors, bool rescaled);

// tensor_stats of `tensor_count` tensors from their pieces' partials, sorted
// by tensor then offset. Returns false (columns incomplete) when a tensor
// needs the rare path and its partials were taken without `rescaled`.
bool combine_stats_partials(const std::vector<StatsPartialOfPiece>& pieces, int64_t tensor_count,
                            const StatsColumns& columns);

// One parameter of an optimiser step: its data, gradient and state buffers
// (same element count; state in the parameter's dtype, null when unused), and
// its own settings when it belongs to a parameter group with other
// hyperparameters or step count (null: the step's shared settings).
struct OptimizerTensor {
  void* param;
  const void* grad;
  void* state[3];
  DType param_dtype;
  DType grad_dtype;
  int64_t count;
  const OptimizerStep* settings = nullptr;
};

// Per parameter, the L2 norm of the update actually applied (||p_new - p_old||)
// and of the new parameter, from the step's own pass.
struct StepNorms {
  std::vector<double> update;
  std::vector<double> param;
};

// Applies one optimiser step to every parameter, pieces spread over the pool;
// fills `norms` when it is not null.
void optimizer_step(const std::vector<OptimizerTensor>& tensors, const OptimizerStep& step, StepNorms* norms = nullptr);

// tensor[i] *= factor; returns whether any value was NaN or inf (before scaling).
bool scale_and_check(const std::vector<TensorRef>& tensors, double factor);

// Unit-wise L2 norms of one tensor for AGC. units_first: units are the rows
// of a (units, rest) buffer; otherwise the columns of a (rest, units) buffer.
void unit_norms(const TensorRef& tensor, int64_t units, bool units_first, double* norms);

// Multiplies unit u of the tensor by factors[u] (same layouts as unit_norms).
void scale_units(const TensorRef& tensor, int64_t units, bool units_first, const double* factors);

}  // namespace gradguard
