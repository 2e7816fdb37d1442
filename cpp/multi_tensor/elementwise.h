// Element-wise passes over a list of tensors: scaling, clamping, and the
// unscale-with-overflow-check of mixed precision.
#pragma once
#include <vector>

#include "multi_tensor/tensor_ref.h"

namespace gradguard {

// tensor[i] *= factor (factor rounded to float32 for 16/32-bit tensors).
void scale_tensors(const std::vector<TensorRef>& tensors, double factor);

// tensor[i] *= factors[i]; tensors whose factor is exactly 1 are skipped.
void scale_tensors(const std::vector<TensorRef>& tensors, const std::vector<double>& factors);

// tensor[i] = clamp(tensor[i], low, high); NaN stays NaN.
void clamp_tensors(const std::vector<TensorRef>& tensors, double low, double high);

// tensor[i] *= factor; returns whether any value was NaN or inf (before scaling).
bool scale_and_check(const std::vector<TensorRef>& tensors, double factor);

}  // namespace gradguard
