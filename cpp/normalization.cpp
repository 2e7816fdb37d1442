#include "normalization.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "dispatch.h"
#include "multi_tensor/tensor_ref.h"
#include "parallel.h"

namespace gradguard {
namespace {

// Outputs at least this large are written with streaming stores: they cannot
// stay in a 32 MiB last-level cache next to their inputs anyway (glibc's
// memcpy switches at a similar size).
constexpr int64_t kStreamingBytes = int64_t(16) << 20;

constexpr size_t kKeptScratchBytes = size_t(16) << 20;

bool stream(int64_t rows, int64_t features, DType dtype) {
  return rows * features * element_size(dtype) >= kStreamingBytes;
}

// 4K aliasing: a load whose address matches a pending store's below bit 12
// waits for that store, and streaming stores stay pending long. In the
// backward, when rows are a whole number of 4 KiB apart, x's and dy's rows
// (a pair of them at a time) all sit at one offset modulo 4 KiB, and if that
// offset is a little behind dx's the loads stall on every line: 2048x4096
// with weight gradients took 14-21 ms instead of 4.5-5 with dx 32-160 bytes
// past x and dy modulo 4 KiB (7 ms at 192, 5 at 256; 8192x1024 alike), and
// 4.6-6.1 ms at every offset with ordinary stores there. Rows of 128, 768 or
// 1000 features, and the forward, showed no such stall, so they keep
// streaming wherever the output lies.
constexpr uintptr_t kPageBytes = 4096;
constexpr uintptr_t kAliasWindowBytes = 256;

uintptr_t distance_past(const void* store, const void* load) {
  return (reinterpret_cast<uintptr_t>(store) - reinterpret_cast<uintptr_t>(load)) % kPageBytes;
}

// Whether the backward's loads from any of `loads` (rows of x and dy, the
// weight vector) would trail its streaming stores to `dx` closely enough to
// stall on them, for rows `row_bytes` apart.
bool loads_trail_output(const void* dx, std::initializer_list<const void*> loads, int64_t row_bytes) {
  if (row_bytes % int64_t(kPageBytes) != 0) return false;
  for (const void* load : loads) {
    if (load == nullptr) continue;
    const uintptr_t distance = distance_past(dx, load);
    if (distance != 0 && distance < kAliasWindowBytes) return true;
  }
  return false;
}

// The weight-gradient partials are ours to place: half a page from dx
// modulo 4 KiB, 64-byte aligned, inside `scratch` (which has a page to spare).
char* partials_away_from(char* scratch, const void* dx) {
  const uintptr_t target = (reinterpret_cast<uintptr_t>(dx) & ~uintptr_t(63)) + kPageBytes / 2;
  return scratch + distance_past(reinterpret_cast<void*>(target), scratch);
}

// Rows per task: about one piece of elements, at least one row.
int64_t rows_per_task(int64_t features) { return std::max<int64_t>(1, kPieceElements / std::max<int64_t>(1, features)); }

}  // namespace

void normalization_forward(const NormalizationForward& given, int64_t rows, DType dtype) {
  NormalizationForward args = given;
  args.stream_output = stream(rows, args.features, dtype);
  const NormalizationForwardFn kernel = active_kernels().normalization_forward[static_cast<int>(dtype)];
  const int64_t step = rows_per_task(args.features);
  parallel_for((rows + step - 1) / step, [&](int64_t task) {
    kernel(args, task * step, std::min(rows, (task + 1) * step));
  });
}

void normalization_backward(const NormalizationBackward& given, int64_t rows, DType dtype, double* dweight,
                            double* dbias) {
  NormalizationBackward args = given;
  args.stream_output = stream(rows, args.features, dtype) &&
                       !loads_trail_output(args.dx, {args.x, args.dy, args.weight}, args.features * element_size(dtype));
  const NormalizationBackwardFn kernel = active_kernels().normalization_backward[static_cast<int>(dtype)];
  const int64_t features = args.features;
  if (dweight == nullptr && dbias == nullptr) {
    const int64_t step = rows_per_task(features);
    parallel_for((rows + step - 1) / step, [&](int64_t task) {
      kernel(args, task * step, std::min(rows, (task + 1) * step), nullptr, nullptr);
    });
    return;
  }
  // Per-chunk partial sums in the compute type, then a float64 sum over the
  // chunks in chunk order, split over the feature axis.
  const int64_t chunks = std::min(rows, kWeightGradientChunks);
  const size_t element = dtype == DType::float64 ? sizeof(double) : sizeof(float);
  const size_t chunk_bytes = static_cast<size_t>(features) * element;
  static thread_local std::vector<char> reusable_scratch;
  std::vector<char>& scratch = reusable_scratch;  // the caller's buffer, also in the workers
  scratch.assign(2 * static_cast<size_t>(chunks) * chunk_bytes + kPageBytes, 0);
  // Kept for the next call only while small: a backward pass over very wide
  // rows must not leave its scratch resident in this thread.
  struct ReleaseLarge {
    std::vector<char>& buffer;
    ~ReleaseLarge() {
      if (buffer.capacity() > kKeptScratchBytes) std::vector<char>().swap(buffer);
    }
  } release{scratch};
  char* weight_partials = partials_away_from(scratch.data(), args.dx);
  char* bias_partials = weight_partials + static_cast<size_t>(chunks) * chunk_bytes;
  parallel_for(chunks, [&](int64_t chunk) {
    kernel(args, rows * chunk / chunks, rows * (chunk + 1) / chunks,
           dweight != nullptr ? weight_partials + chunk * chunk_bytes : nullptr,
           dbias != nullptr ? bias_partials + chunk * chunk_bytes : nullptr);
  });
  // Features per task of the reduction over chunks: a piece's worth of
  // partials to read, and never so few that scheduling dominates.
  constexpr int64_t kMinFeaturesPerTask = 1024;
  const int64_t feature_step = std::max<int64_t>(kMinFeaturesPerTask, kPieceElements / chunks);
  parallel_for((features + feature_step - 1) / feature_step, [&](int64_t task) {
    const int64_t first = task * feature_step, end = std::min(features, first + feature_step);
    for (double* out : {dweight, dbias}) {
      if (out == nullptr) continue;
      const char* partials = out == dweight ? weight_partials : bias_partials;
      for (int64_t feature = first; feature < end; ++feature) out[feature] = 0.0;
      for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const char* base = partials + chunk * chunk_bytes;
        if (dtype == DType::float64) {
          const double* values = reinterpret_cast<const double*>(base);
          for (int64_t feature = first; feature < end; ++feature) out[feature] += values[feature];
        } else {
          const float* values = reinterpret_cast<const float*>(base);
          for (int64_t feature = first; feature < end; ++feature) out[feature] += double(values[feature]);
        }
      }
    }
  });
}

}  // namespace gradguard
