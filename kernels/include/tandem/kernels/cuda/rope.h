// Rotary embedding ("rotate half", Hugging Face) on Q and K in place. Reference: tandem::ref::Rope.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// For every token i, head h of q and of k, and pair j < head_dim / 2:
//   theta = float(positions[i]) * inv_freq[j]
//   a = x[j], b = x[j + d/2];  x[j] = a cos - b sin;  x[j + d/2] = b cos + a sin
// inv_freq is computed on the host (llama3 frequency scaling already applied there).
// Row strides let q and k live inside a fused QKV buffer.
template <typename T>
struct RopeParams {
  T* q = nullptr;  // [n, q_stride], heads * head_dim used per row
  T* k = nullptr;  // [n, k_stride], kv_heads * head_dim used per row; or nullptr
  const int32_t* positions = nullptr;  // [n]
  const float* inv_freq = nullptr;     // [head_dim / 2]
  int64_t n = 0;
  int32_t heads = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;  // even
  int64_t q_stride = 0;  // elements between tokens of q; 0 means heads * head_dim
  int64_t k_stride = 0;  // elements between tokens of k; 0 means kv_heads * head_dim
};

template <typename T>
cudaError_t LaunchRope(const RopeParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
