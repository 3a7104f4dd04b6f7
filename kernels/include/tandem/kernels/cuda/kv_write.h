// Writes new K/V rows into the paged cache.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"
#include "tandem/kernels/cuda/paged_kv.h"

namespace tandem::cuda {

// For token i with slot_mapping[i] = s >= 0 (block = s / page_size, slot = s % page_size):
//   cache.K(block, slot, h)[:] = k[i, h, :];  cache.V(block, slot, h)[:] = v[i, h, :]
// Tokens with s < 0 are skipped (padding). Row strides let k and v live in a fused QKV buffer.
template <typename T>
struct KvWriteParams {
  PagedKv<T> cache;
  const T* k = nullptr;                   // [n, k_stride], kv_heads * head_dim used per row
  const T* v = nullptr;                   // [n, v_stride], kv_heads * head_dim used per row
  const int64_t* slot_mapping = nullptr;  // [n] block * page_size + slot, or -1
  int64_t n = 0;
  int64_t k_stride = 0;  // 0 means kv_heads * head_dim
  int64_t v_stride = 0;  // 0 means kv_heads * head_dim
};

template <typename T>
cudaError_t LaunchKvWrite(const KvWriteParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
