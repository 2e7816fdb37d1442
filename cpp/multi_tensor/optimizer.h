// The fused optimiser step over a list of parameters, and the policy around
// it: the gradients' global norm, the clip coefficient and the loss scale's
// inverse folded into the update's own pass, a non-finite step skipped.
#pragma once
#include <cstdint>
#include <limits>
#include <vector>

#include "kernel_table.h"
#include "multi_tensor/norms.h"

namespace gradguard {

// State buffers per parameter: SGD {momentum_buffer}; Adam {exp_avg,
// exp_avg_sq, max_exp_avg_sq}; RMSprop {square_avg, momentum_buffer,
// grad_avg} (exported to Python as STATE_SLOTS).
constexpr int kStateSlots = 3;

// One parameter of an optimiser step: its data, gradient and state buffers
// (same element count; state in the parameter's dtype, null when unused), and
// its own settings when it belongs to a parameter group with other
// hyperparameters or step count (null: the step's shared settings).
struct OptimizerTensor {
  void* param;
  const void* grad;
  void* state[kStateSlots];
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

// What a step does besides the update.
struct StepPolicy {
  bool want_norm = false;        // take the gradients' global L2 norm (clipping, loss scaling, skipping need it)
  double known_norm = std::numeric_limits<double>::quiet_NaN();  // that norm, when the caller has it (NaN: compute)
  double max_norm = std::numeric_limits<double>::quiet_NaN();    // clip at this (NaN: no clipping)
  double clip_eps = kClipEps;
  double inverse_scale = 1.0;    // 1 / loss scale: the gradients are unscaled inside the update
  bool skip_nonfinite = false;   // a NaN/inf norm skips the update (nothing changes)
  bool want_step_norms = false;  // fill StepOutcome::step_norms
};

struct StepOutcome {
  GlobalNorm norm;           // of the gradients as given (scaled); total only when the norm was known
  double unscaled_norm = std::numeric_limits<double>::quiet_NaN();  // norm.total * inverse_scale
  double coefficient = 1.0;  // the clip coefficient folded into the update (0 when skipped)
  bool skipped = false;
  StepNorms step_norms;
};

// The step with its policy: the norm (when wanted) of the unscaled gradients,
// coefficient = clip_coefficient(max_norm, norm, clip_eps) (NaN for an
// infinite norm), then every group's grad_scale = coefficient x inverse_scale
// and the update, unless skip_nonfinite finds the norm NaN/inf.
// `groups` are the settings the tensors point to; their grad_scale is set here.
StepOutcome guarded_optimizer_step(const std::vector<OptimizerTensor>& tensors, std::vector<OptimizerStep>& groups,
                                   const StepPolicy& policy);

}  // namespace gradguard
