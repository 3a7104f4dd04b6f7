// Shared-memory page pools for the `shm` transport (same host, CPU pages): the receiver's pool
// lives in a memfd whose descriptor goes once to each sender over a Unix socket; senders then
// copy each computed layer straight into the receiver's pages, and only the control messages
// (start / accept / layer-done / abort) travel over the socket.
//
// The pool is laid out like the engine's PagePool:
//   page(layer, block) starts at byte (layer * num_blocks + block) * page_bytes.
//
// Thread safety: plain values; SharedPageBuffer is immutable after Create (as HostPageBuffer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "tandem/common/status.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem {

// A receiver's page pool in shared memory, described for TransceiverOptions::shm_pool.
struct SharedPagePool {
  int fd = -1;                // the memfd (stays owned by whoever created it)
  std::byte* base = nullptr;  // the receiver's own mapping of it
  size_t bytes = 0;           // num_layers * num_blocks * page_bytes
  int32_t num_blocks = 0;
};

// Owns a memfd-backed pool (zero-filled; untouched pages cost no memory). For tests and
// benchmarks; workers expose the engine's shared pool (ShmPagePool) instead.
class SharedPageBuffer final : public PageAccessor {
 public:
  // RESOURCE_EXHAUSTED when the memfd cannot be created or mapped.
  static StatusOr<std::unique_ptr<SharedPageBuffer>> Create(const KvPageLayout& layout,
                                                            int32_t num_blocks);
  ~SharedPageBuffer() override;
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return pages_.Page(layer, block);
  }
  int32_t num_blocks() const { return pool_.num_blocks; }
  std::span<std::byte> bytes() const { return {pool_.base, pool_.bytes}; }
  const SharedPagePool& pool() const { return pool_; }

 private:
  SharedPageBuffer(SharedPagePool pool, const KvPageLayout& layout)
      : pool_(pool), pages_(pool.base, layout, pool.num_blocks) {}
  SharedPagePool pool_;
  PagesAt pages_;
};

}  // namespace tandem
