#include "multi_tensor/plan.h"

#include <algorithm>

namespace gradguard {

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

void release_if_large(Plan& plan) {
  if (plan.pieces.capacity() > kKeptPieces || plan.tensor_first_piece.capacity() > kKeptPieces) plan = Plan();
}

}  // namespace gradguard
