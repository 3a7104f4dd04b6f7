// Paged KV cache shared by prefill and decode: a BlockAllocator (host bookkeeping of block ids)
// plus a PagePool (the page memory, host today; shared or device memory behind the same
// interface). The geometry — pages, blocks, block tables — is common's KvGeometry
// (tandem/common/kv_geometry.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "tandem/common/kv_geometry.h"
#include "tandem/common/status.h"
#include "tandem/engine/block_allocator.h"
#include "tandem/engine/page_pool.h"

namespace tandem {

// Page memory is written only by the owner of the block.
class KvCache {
 public:
  // A cache over `pool`, with an allocator for its blocks.
  explicit KvCache(std::unique_ptr<PagePool> pool);
  // A cache in host memory (tests, tools); aborts when the memory cannot be mapped — a backend
  // creates its pool with ModelRunner::CreatePagePool and gets a status.
  KvCache(const KvGeometry& geometry, int32_t num_blocks);

  const KvGeometry& geometry() const { return pool_->geometry(); }
  BlockAllocator& allocator() { return allocator_; }
  const BlockAllocator& allocator() const { return allocator_; }
  PagePool& pool() { return *pool_; }
  const PagePool& pool() const { return *pool_; }

  // Host f32 views of the pages (the CPU backend's; valid for a kHost pool of f32 pages).
  float* Page(int32_t layer, int32_t block) {
    return reinterpret_cast<float*>(pool_->Page(layer, block));
  }
  const float* Page(int32_t layer, int32_t block) const {
    return reinterpret_cast<const float*>(pool_->Page(layer, block));
  }
  // K (or V) of one token slot: [kv_heads][head_dim].
  float* Key(int32_t layer, int32_t block, int32_t slot) {
    return Page(layer, block) + slot * geometry().TokenElems();
  }
  float* Value(int32_t layer, int32_t block, int32_t slot) {
    return Page(layer, block) + (geometry().page_size + slot) * geometry().TokenElems();
  }
  const float* Key(int32_t layer, int32_t block, int32_t slot) const {
    return Page(layer, block) + slot * geometry().TokenElems();
  }
  const float* Value(int32_t layer, int32_t block, int32_t slot) const {
    return Page(layer, block) + (geometry().page_size + slot) * geometry().TokenElems();
  }

  // Blocks needed to hold `tokens` positions.
  int32_t BlocksFor(int64_t tokens) const { return geometry().BlocksFor(tokens); }

 private:
  std::unique_ptr<PagePool> pool_;  // pages are uninitialised: written before they are read
  BlockAllocator allocator_;
};

}  // namespace tandem
