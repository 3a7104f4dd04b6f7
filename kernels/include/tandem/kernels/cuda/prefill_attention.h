// Prefill (and chunked-prefill) attention over the paged KV cache. Reference:
// tandem::ref::Attention, with K/V gathered from the pages.
#pragma once

#include <cstdint>

#include "tandem/kernels/cuda/common.h"
#include "tandem/kernels/cuda/paged_kv.h"

namespace tandem::cuda {

// Sequence b contributes q_len_b = q_indptr[b + 1] - q_indptr[b] query tokens: the LAST q_len_b
// tokens of its kv_lens[b] cached tokens (their K/V must already be in the cache, written by
// LaunchKvWrite), so query row i of b sits at position kv_lens[b] - q_len_b + i. A query at
// position p sees cached positions j with j <= p and (window == 0 || j > p - window).
// Query head h reads kv head h / (heads / kv_heads).
//
// Reduction order: keys are visited in tiles of 32 aligned to absolute positions, with an
// online softmax in tile order and a fixed order inside a tile. Tiles that are fully masked for
// a query leave its state bit-identical, so a query's result depends only on its own position
// and the cache contents — not on the chunking, the batch, or its place in the batch.
template <typename T>
struct PrefillAttentionParams {
  const T* q = nullptr;               // [total_q, q_stride], heads * head_dim used per row
  T* out = nullptr;                   // [total_q, heads, head_dim]
  PagedKv<T> cache;                   // the layer to read
  BlockTables tables;                 // [batch, max_blocks_per_seq]
  const int32_t* q_indptr = nullptr;  // [batch + 1] query token offsets, q_indptr[0] = 0
  const int32_t* kv_lens = nullptr;   // [batch] cached tokens per sequence (>= its q_len)
  int32_t batch = 0;
  int32_t heads = 0;      // multiple of cache.kv_heads
  int32_t max_q_len = 0;  // host-side upper bound of every q_len_b (sizes the grid)
  int32_t window = 0;     // sliding window in tokens; 0 = full causal
  float scale = 0.0f;     // usually 1 / sqrt(head_dim)
  int64_t q_stride = 0;   // elements between query tokens; 0 means heads * head_dim
};

// head_dim 64 or 128 (else cudaErrorNotSupported). SIMT kernel (fp32 FMA, no tensor cores):
// correctness first; a wgmma/mma path is future work.
template <typename T>
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
