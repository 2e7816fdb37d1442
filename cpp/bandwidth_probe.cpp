#include "bandwidth_probe.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernel_table.h"
#include "multi_tensor/plan.h"

namespace gradguard {
namespace {

// Four independent 16-byte accumulators: baseline SSE2 adds retire far faster
// than memory delivers, so the loop measures memory, not arithmetic, on every
// x86-64 CPU (and compiles anywhere through the vector extension).
typedef float Quad __attribute__((vector_size(16)));
constexpr int kQuadFloats = 4;
constexpr int kAccumulators = 4;

double sum_piece(const float* data, int64_t count) {
  Quad sums[kAccumulators] = {};
  int64_t index = 0;
  constexpr int64_t ahead = kPrefetchBytes / int64_t(sizeof(float));
  for (; index + kAccumulators * kQuadFloats <= count; index += kAccumulators * kQuadFloats) {
    if (index + ahead < count) __builtin_prefetch(data + index + ahead);
    for (int lane = 0; lane < kAccumulators; ++lane) {
      Quad values;
      std::memcpy(&values, data + index + lane * kQuadFloats, sizeof values);
      sums[lane] += values;
    }
  }
  double total = 0.0;
  for (const Quad& quad : sums)
    for (int lane = 0; lane < kQuadFloats; ++lane) total += quad[lane];
  for (; index < count; ++index) total += data[index];
  return total;
}

}  // namespace

double read_probe(const std::vector<TensorRef>& tensors) {
  Plan plan;
  make_plan(tensors, plan);
  std::vector<double> partials(plan.pieces.size());
  multi_tensor_apply(tensors, plan, Direction::forwards, [&](const PieceWork& work) {
    partials[work.index] = sum_piece(reinterpret_cast<const float*>(work.address), work.piece.count);
  });
  double sum = 0.0;
  for (double partial : partials) sum += partial;
  return sum;
}

}  // namespace gradguard
