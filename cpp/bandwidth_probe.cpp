#include "bandwidth_probe.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernel_table.h"
#include "multi_tensor/tensor_ref.h"
#include "parallel.h"

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

double read_probe(const float* data, int64_t count) {
  const int64_t pieces = (count + kPieceElements - 1) / kPieceElements;
  std::vector<double> partials(static_cast<size_t>(pieces));
  parallel_for(pieces, [&](int64_t piece) {
    const int64_t first = piece * kPieceElements;
    partials[piece] = sum_piece(data + first, std::min(kPieceElements, count - first));
  });
  double sum = 0.0;
  for (double partial : partials) sum += partial;
  return sum;
}

}  // namespace gradguard
