// Per-tensor statistics over a list of tensors in one read, as mergeable
// partials and their fold (tensor_stats is these two steps).
#pragma once
#include <cstdint>
#include <vector>

#include "kernel_table.h"
#include "multi_tensor/tensor_ref.h"

namespace gradguard {

// The statistics' names, in the order StatsColumns lists them: the one list
// (exported to Python as STATS_FIELDS; gg.GradStats is built from it).
constexpr const char* kStatsFieldNames[] = {"numel", "mean", "std", "abs_mean", "l2",
                                            "min", "max", "n_nan", "n_inf", "n_zero"};
constexpr int kStatsFieldCount = sizeof(kStatsFieldNames) / sizeof(kStatsFieldNames[0]);

// Per-tensor statistics, written into caller-owned columns (one entry per
// tensor). Moments are over each tensor's finite entries:
//   mean = sum x / n, std = sqrt(sum (x - mean)^2 / n), abs_mean = sum |x| / n,
//   min, max (NaN when n = 0), l2 = sqrt(sum x^2) (0 when n = 0);
// numel, n_nan, n_inf and n_zero count entries. l2 sums float64 squares of the
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

// One piece's statistics partial (see the mergeable partials in norms.h); with
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

// The L2 norm of all `tensors` from their statistics (GradStats.global_norm):
// NaN when any n_nan is nonzero, otherwise inf when any n_inf is, otherwise
// sqrt(sum l2^2), formed as L * sqrt(sum (l2 / L)^2) with L = max l2 so that
// no square overflows or underflows (L itself when it is 0 or not finite).
double global_norm_of_stats(const double* l2, const int64_t* nan, const int64_t* inf, int64_t tensors);

}  // namespace gradguard
