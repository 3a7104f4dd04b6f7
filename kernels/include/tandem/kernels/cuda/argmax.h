// Row-wise argmax (greedy decoding).
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// out[r] = index of the largest logits[r, :]; ties go to the lowest index and NaN never wins
// (0 if the row is all NaN) — the rule of the CPU sampler's Argmax. The result does not depend
// on the reduction order, so it is exact and batch-invariant.
template <typename T>
struct ArgmaxParams {
  const T* logits = nullptr;  // [rows, vocab]
  int32_t* out = nullptr;     // [rows]
  int64_t rows = 0;
  int64_t vocab = 0;
};

template <typename T>
cudaError_t LaunchArgmax(const ArgmaxParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
