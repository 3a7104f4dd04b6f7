// SwiGLU activation. Reference: tandem::ref::SwiGlu.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// out[i, j] = silu(gate[i, j]) * up[i, j],  silu(g) = g / (1 + exp(-g)), in fp32.
// in_stride lets gate and up be the two halves of a fused [n, 2f] projection
// (gate = gu, up = gu + f, in_stride = 2f).
template <typename T>
struct SwiGluParams {
  const T* gate = nullptr;  // [n, in_stride], f used per row
  const T* up = nullptr;    // [n, in_stride], f used per row
  T* out = nullptr;         // [n, f]
  int64_t n = 0;
  int64_t f = 0;
  int64_t in_stride = 0;  // 0 means f
};

template <typename T>
cudaError_t LaunchSwiGlu(const SwiGluParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
