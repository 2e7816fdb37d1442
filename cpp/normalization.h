// Layer norm and RMS norm over the last axis of a (rows, features) buffer,
// rows spread over the thread pool.
#pragma once
#include <cstdint>

#include "kernel_table.h"

namespace gradguard {

void normalization_forward(const NormalizationForward& args, int64_t rows, DType dtype);

// dweight / dbias (float64, `features` long; either may be null) receive
// sum over rows of dy * xhat and of dy. They are accumulated per chunk of rows
// (at most kWeightGradientChunks chunks, fixed by the row count alone) and the
// chunks are added in order, so the result is the same for any thread count
// and the scratch is at most kWeightGradientChunks x features.
void normalization_backward(const NormalizationBackward& args, int64_t rows, DType dtype, double* dweight,
                            double* dbias);

constexpr int64_t kWeightGradientChunks = 64;

}  // namespace gradguard
