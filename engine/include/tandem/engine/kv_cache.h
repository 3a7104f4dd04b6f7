// Paged KV cache shared by prefill and decode.
//
// A block holds `page_size` consecutive token positions of one sequence; it owns one page per
// layer. A page is one layer's K then V for those positions:
//   page(layer, block) = float[2][page_size][kv_heads][head_dim]   (K at [0], V at [1])
// Pages of one layer are contiguous in block order, so a layer can be shipped page by page.
// A sequence's block table lists its blocks in position order: position p lives in
// block_table[p / page_size], slot p % page_size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

struct KvLayout {
  int32_t num_layers = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t page_size = 16;  // tokens per page. Default: 16.

  size_t TokenFloats() const { return size_t(num_kv_heads) * head_dim; }
  size_t PageFloats() const { return 2 * size_t(page_size) * TokenFloats(); }
  size_t PageBytes() const { return PageFloats() * sizeof(float); }
  // Bytes one block takes across all layers.
  size_t BlockBytes() const { return PageBytes() * num_layers; }
};

// Hands out block ids with reference counts (a block shared by two sequences is freed when
// the last one lets go). Allocation is all-or-nothing.
// Thread safety: all methods may be called concurrently.
class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  // `n` blocks with reference count 1, lowest ids first; RESOURCE_EXHAUSTED (nothing taken)
  // when fewer than `n` are free.
  StatusOr<std::vector<int32_t>> Allocate(int32_t n);
  // Adds a reference to each block (they must be in use).
  void Retain(std::span<const int32_t> blocks);
  // Drops a reference to each block; blocks reaching zero become free.
  // Releasing a block that is not in use is a broken invariant (abort).
  void Release(std::span<const int32_t> blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const;
  int32_t num_used() const { return num_blocks() - num_free(); }
  int32_t ref_count(int32_t block) const;

 private:
  mutable std::mutex mu_;
  std::vector<int32_t> ref_counts_;
  std::vector<int32_t> free_;  // kept sorted descending so back() is the lowest free id
};

// Page storage plus its allocator. Page memory is written only by the owner of the block.
class KvCache {
 public:
  KvCache(const KvLayout& layout, int32_t num_blocks);

  const KvLayout& layout() const { return layout_; }
  BlockAllocator& allocator() { return allocator_; }
  const BlockAllocator& allocator() const { return allocator_; }

  float* Page(int32_t layer, int32_t block) {
    return storage_.get() + (size_t(layer) * num_blocks_ + block) * layout_.PageFloats();
  }
  const float* Page(int32_t layer, int32_t block) const {
    return storage_.get() + (size_t(layer) * num_blocks_ + block) * layout_.PageFloats();
  }
  // K (or V) of one token slot: [kv_heads][head_dim].
  float* Key(int32_t layer, int32_t block, int32_t slot) {
    return Page(layer, block) + size_t(slot) * layout_.TokenFloats();
  }
  float* Value(int32_t layer, int32_t block, int32_t slot) {
    return Page(layer, block) + (size_t(layout_.page_size) + slot) * layout_.TokenFloats();
  }
  const float* Key(int32_t layer, int32_t block, int32_t slot) const {
    return Page(layer, block) + size_t(slot) * layout_.TokenFloats();
  }
  const float* Value(int32_t layer, int32_t block, int32_t slot) const {
    return Page(layer, block) + (size_t(layout_.page_size) + slot) * layout_.TokenFloats();
  }

  // Blocks needed to hold `tokens` positions.
  int32_t BlocksFor(int64_t tokens) const {
    return static_cast<int32_t>((tokens + layout_.page_size - 1) / layout_.page_size);
  }

 private:
  KvLayout layout_;
  int32_t num_blocks_;
  std::unique_ptr<float[]> storage_;  // uninitialised: pages are written before they are read
  BlockAllocator allocator_;
};

}  // namespace tandem
