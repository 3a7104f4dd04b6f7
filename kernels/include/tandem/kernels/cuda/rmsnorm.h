// RMSNorm with an optional fused residual add. Reference: tandem::ref::RmsNorm.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// Per row i:
//   if residual: x[i, :] = T(x[i, :] + residual[i, :])   (sum in fp32, stored rounded to T)
//   out[i, j] = x[i, j] / sqrt(mean_j(x[i, j]^2) + eps) * weight[j]   (fp32, from the stored x)
// One block per row and a fixed reduction tree, so a row never depends on the others.
template <typename T>
struct RmsNormParams {
  T* x = nullptr;               // [n, dim]; updated in place when residual != nullptr
  const T* residual = nullptr;  // [n, dim] or nullptr
  const T* weight = nullptr;    // [dim]
  T* out = nullptr;             // [n, dim]; may alias x
  int64_t n = 0;
  int64_t dim = 0;
  float eps = 1e-5f;
};

template <typename T>
cudaError_t LaunchRmsNorm(const RmsNormParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
