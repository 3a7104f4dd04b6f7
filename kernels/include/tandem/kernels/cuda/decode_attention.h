// Decode attention: one query token per sequence over its paged KV. Reference:
// tandem::ref::Attention with n = 1 at position seq_len - 1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tandem/kernels/cuda/common.h"
#include "tandem/kernels/cuda/paged_kv.h"

namespace tandem::cuda {

// Pass 1: grid (split, kv head, sequence). A block reads each K/V row of its kv head once for
// the whole query group (heads / kv_heads <= 16 query heads) and keeps an online softmax per
// query head over its chunk of positions [split * chunk, (split + 1) * chunk) in tiles of 32.
// Pass 2 merges the splits of each (sequence, head) in split order.
//
// Determinism:
//  - Always: the same inputs and launch parameters give bit-identical outputs run to run (no
//    atomics, fixed reduction orders).
//  - deterministic = true: the chunk size is `deterministic_chunk` whatever the batch, so the
//    split points, and with them every rounding, depend only on the sequence's own length:
//    a sequence's output is identical at any batch size or position in the batch
//    (batch-invariant, DESIGN.md Parity).
//  - deterministic = false: the chunk is chosen from batch * kv_heads and the SM count to fill
//    the GPU, so results may change in the last bits with the batch composition.
template <typename T>
struct DecodeAttentionParams {
  const T* q = nullptr;               // [batch, q_stride], heads * head_dim used per row
  T* out = nullptr;                   // [batch, heads, head_dim]
  PagedKv<T> cache;                   // the layer to read
  BlockTables tables;                 // [batch, max_blocks_per_seq]
  const int32_t* seq_lens = nullptr;  // [batch] cached tokens incl. the current one (>= 1)
  int32_t batch = 0;
  int32_t heads = 0;        // multiple of cache.kv_heads, heads / kv_heads <= 16
  int32_t max_seq_len = 0;  // host-side upper bound of seq_lens (sizes the split grid)
  int32_t window = 0;       // sliding window; 0 = full causal
  float scale = 0.0f;
  int64_t q_stride = 0;  // 0 means heads * head_dim
  bool deterministic = false;
  int32_t deterministic_chunk = 512;  // positions per split in deterministic mode; multiple of 32
  float* workspace = nullptr;         // DecodeAttentionWorkspaceBytes(p) bytes, 256-byte aligned
  size_t workspace_bytes = 0;
};

// Scratch the launcher needs for these params (depends on batch, heads, head_dim, max_seq_len,
// the mode and, in fast mode, the current device's SM count).
template <typename T>
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionParams<T>& p);

// head_dim 64 or 128 (else cudaErrorNotSupported).
template <typename T>
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams<T>& p, cudaStream_t stream);

}  // namespace tandem::cuda
