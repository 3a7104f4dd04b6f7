// KvGeometry: the shape of the paged KV cache, the one definition every module uses (the
// engine's cache, the KV transfer wire layout, CUDA kernels' page views).
//
// A block holds `page_size` consecutive token positions of one sequence and owns one page per
// layer. A page is one layer's K then V for those positions:
//   page(layer, block) = elem[2][page_size][num_kv_heads][head_dim]   (K at [0], V at [1])
// Pages of one layer are contiguous in block order: page(layer, block) starts at element
// (layer * num_blocks + block) * PageElems() of the pool, so a layer can be shipped page by page.
// A sequence's block table lists its blocks in position order: position p lives in
// block_table[p / page_size], slot p % page_size.
//
// Thread safety: plain value type.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tandem/common/dtype.h"

namespace tandem {

struct KvGeometry {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;     // tokens per page. Default: 16.
  DType dtype = DType::kF32;  // element type of K and V (a float type). Default: f32.

  // Elements of one token's K (or V) in one layer: kv_heads * head_dim.
  int64_t TokenElems() const { return int64_t{num_kv_heads} * head_dim; }
  // Elements of one page: 2 * page_size * TokenElems().
  int64_t PageElems() const { return 2 * int64_t{page_size} * TokenElems(); }
  size_t PageBytes() const { return static_cast<size_t>(PageElems()) * DTypeSize(dtype); }
  // Bytes one block takes across all layers.
  size_t BlockBytes() const { return PageBytes() * static_cast<size_t>(num_layers); }
  // Blocks needed to hold `tokens` positions.
  int32_t BlocksFor(int64_t tokens) const {
    return static_cast<int32_t>((tokens + page_size - 1) / page_size);
  }

  bool operator==(const KvGeometry&) const = default;
};

}  // namespace tandem
