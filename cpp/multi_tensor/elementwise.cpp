#include "multi_tensor/elementwise.h"

#include "dispatch.h"
#include "multi_tensor/plan.h"

namespace gradguard {

void scale_tensors(const std::vector<TensorRef>& tensors, double factor) {
  scale_tensors(tensors, std::vector<double>(tensors.size(), factor));
}

void scale_tensors(const std::vector<TensorRef>& tensors, const std::vector<double>& factors) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  const ReleaseIfLarge release(reusable_plan);
  // Backwards: this write pass usually follows a norm's read pass over the same tensors.
  multi_tensor_apply(tensors, make_plan(tensors, reusable_plan), Direction::backwards, [&](const PieceWork& work) {
    const double factor = factors[work.piece.tensor];
    if (factor != 1.0) kernels.scale[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count, factor);
  });
}

void clamp_tensors(const std::vector<TensorRef>& tensors, double low, double high) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  const ReleaseIfLarge release(reusable_plan);
  multi_tensor_apply(tensors, make_plan(tensors, reusable_plan), Direction::forwards, [&](const PieceWork& work) {
    kernels.clamp[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count, low, high);
  });
}

bool scale_and_check(const std::vector<TensorRef>& tensors, double factor) {
  const KernelTable& kernels = active_kernels();
  static thread_local Plan reusable_plan;
  static thread_local std::vector<char> reusable_flags;
  std::vector<char>& flags = reusable_flags;  // one per piece: no shared write
  const ReleaseIfLarge release(reusable_plan, flags);
  const Plan& plan = make_plan(tensors, reusable_plan);
  flags.assign(plan.pieces.size(), 0);
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    flags[work.index] = kernels.scale_check[static_cast<int>(work.tensor.dtype)](work.address, work.piece.count, factor);
  });
  for (char flag : flags)
    if (flag) return true;
  return false;
}

}  // namespace gradguard
