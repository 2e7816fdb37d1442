// Norms over a list of tensors, as mergeable partials and their fold, and the
// clipping rules built on them (torch's clip_grad_norm_ and tf.clip_by_norm).
#pragma once
#include <cstdint>
#include <vector>

#include "kernel_table.h"
#include "multi_tensor/tensor_ref.h"

namespace gradguard {

// torch.nn.utils.clip_grad_norm_'s eps, the default of every clipping entry
// point (exported to Python as CLIP_EPS).
constexpr double kClipEps = 1e-6;

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
  std::vector<int64_t> nonfinite() const;  // indices of the tensors holding NaN or inf
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

// clip_by_global_norm: the norm, then every tensor *= coefficient when it is
// not 1. With error_if_nonfinite a NaN/inf total writes nothing (the caller
// raises, naming GlobalNorm::nonfinite()).
struct GlobalClip {
  GlobalNorm norm;
  double coefficient = 1.0;
  bool clipped = false;
};
GlobalClip clip_by_global_norm(const std::vector<TensorRef>& tensors, double max_norm, NormOrder order, double eps,
                               bool error_if_nonfinite);

// The second half alone, for a norm known already: returns the coefficient applied.
double clip_with_norm(const std::vector<TensorRef>& tensors, double max_norm, double total, double eps);

// Each tensor by its own norm: tensor[i] *= clip_coefficient(max_norm, ||tensor[i]||, eps);
// returns the norms before clipping.
std::vector<double> clip_by_norm(const std::vector<TensorRef>& tensors, double max_norm, NormOrder order, double eps);

}  // namespace gradguard
