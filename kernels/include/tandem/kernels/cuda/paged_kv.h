// The engine's paged KV cache as seen by kernels (tandem/engine/kv_cache.h is the spec):
//   page(layer, block) = T[2][page_size][kv_heads][head_dim]   (K at [0], V at [1])
//   page pointer = base + (layer * num_blocks + block) * page_elems,
//   page_elems = 2 * page_size * kv_heads * head_dim.
// A sequence's block table maps position p to block_table[p / page_size], slot p % page_size.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

template <typename T>
struct PagedKv {
  T* base = nullptr;  // [num_layers, num_blocks, 2, page_size, kv_heads, head_dim]
  int32_t layer = 0;
  int32_t num_blocks = 0;
  int32_t page_size = 0;  // tokens per page, any value >= 1 (a runtime size: it only
                          // enters address arithmetic, so it is not a template parameter)
  int32_t kv_heads = 0;
  int32_t head_dim = 0;

  __host__ __device__ int64_t PageElems() const {
    return 2 * int64_t{page_size} * kv_heads * head_dim;
  }
  // K row of (block, slot, head); the V row is page_size * kv_heads * head_dim further.
  __host__ __device__ T* K(int32_t block, int32_t slot, int32_t head) const {
    return base + (int64_t{layer} * num_blocks + block) * PageElems() +
           (int64_t{slot} * kv_heads + head) * head_dim;
  }
  __host__ __device__ T* V(int32_t block, int32_t slot, int32_t head) const {
    return K(block, slot, head) + int64_t{page_size} * kv_heads * head_dim;
  }
  bool Valid() const {
    return base != nullptr && layer >= 0 && num_blocks > 0 && page_size > 0 && kv_heads > 0 &&
           head_dim > 0;
  }
};

// Block tables of a batch of sequences, padded to max_blocks_per_seq columns.
struct BlockTables {
  const int32_t* table = nullptr;  // [batch, max_blocks_per_seq]; entry b, p / page_size
  int32_t max_blocks_per_seq = 0;
};

}  // namespace tandem::cuda
