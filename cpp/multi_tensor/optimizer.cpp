#include "multi_tensor/optimizer.h"

#include <cmath>
#include <limits>

#include "dispatch.h"
#include "multi_tensor/plan.h"

namespace gradguard {

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
  multi_tensor_apply(refs, plan, Direction::forwards, [&](const PieceWork& work) {
    const Piece& piece = work.piece;
    char* const param = work.address;
    const int64_t index = work.index;
    const OptimizerTensor& tensor = tensors[piece.tensor];
    const int param_size = element_size(tensor.param_dtype);
    void* state[kStateSlots];
    for (int slot = 0; slot < kStateSlots; ++slot)
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
    for (int64_t piece = plan.first_piece(tensor); piece < plan.end_piece(tensor); ++piece) {
      update += partials[2 * piece];
      param += partials[2 * piece + 1];
    }
    norms->update[tensor] = std::sqrt(update);
    norms->param[tensor] = std::sqrt(param);
  }
}


StepOutcome guarded_optimizer_step(const std::vector<OptimizerTensor>& tensors, std::vector<OptimizerStep>& groups,
                                   const StepPolicy& policy) {
  StepOutcome outcome;
  if (policy.want_norm) {
    // A norm the caller has just computed (the guard's, the adaptive clipper's,
    // one taken during backward or over ranks) is not recomputed: the step
    // then reads the gradients once.
    if (std::isnan(policy.known_norm)) {
      std::vector<TensorRef> grads;
      grads.reserve(tensors.size());
      for (const OptimizerTensor& tensor : tensors)
        grads.push_back({const_cast<void*>(tensor.grad), tensor.count, tensor.grad_dtype});
      outcome.norm = global_norm(grads, NormOrder::from(2.0));
    } else {
      outcome.norm.total = policy.known_norm;
    }
    outcome.unscaled_norm = outcome.norm.total * policy.inverse_scale;
    if (policy.skip_nonfinite && !std::isfinite(outcome.norm.total)) {
      outcome.skipped = true;
      outcome.coefficient = 0.0;
      return outcome;
    }
    if (!std::isnan(policy.max_norm))
      outcome.coefficient = std::isfinite(outcome.unscaled_norm)
                                ? clip_coefficient(policy.max_norm, outcome.unscaled_norm, policy.clip_eps)
                                : std::numeric_limits<double>::quiet_NaN();
  }
  for (OptimizerStep& group : groups) group.grad_scale = outcome.coefficient * policy.inverse_scale;
  optimizer_step(tensors, groups.front(), policy.want_step_norms ? &outcome.step_norms : nullptr);
  return outcome;
}

}  // namespace gradguard
