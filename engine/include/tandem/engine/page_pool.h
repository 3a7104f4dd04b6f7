// PagePool: the memory that holds KV pages, one contiguous region laid out as
// tandem/common/kv_geometry.h states: page(layer, block) starts at byte
// (layer * num_blocks + block) * PageBytes(). Backends differ in where the region lives: host
// memory today; shared memory (same-host KV transfer) and device memory (CUDA) implement the
// same interface.
//
// Thread safety: the pool itself is immutable after construction; who may write a page is
// decided by the page's owner (see BlockAllocator and the KV transfer's reservations).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "tandem/common/kv_geometry.h"
#include "tandem/common/status.h"

namespace tandem {

enum class PageMemory { kHost, kDevice };

class PagePool {
 public:
  virtual ~PagePool() = default;
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  const KvGeometry& geometry() const { return geometry_; }
  int32_t num_blocks() const { return num_blocks_; }
  // Where the bytes are: host pointers may be dereferenced, device ones only by kernels.
  PageMemory memory() const { return memory_; }
  virtual std::string_view kind() const = 0;  // "host", "cuda", "shm", ...
  // Whether the host may read and write the pages through Page() (true for host memory; for
  // the CUDA interpreter's "device" memory, which is host memory too).
  virtual bool host_accessible() const { return memory_ == PageMemory::kHost; }
  // Bytes of the whole region.
  size_t bytes() const { return size_t(num_blocks_) * geometry_.BlockBytes(); }

  // Start of page (layer, block).
  std::byte* Page(int32_t layer, int32_t block) const {
    return base_ + (size_t(layer) * num_blocks_ + block) * geometry_.PageBytes();
  }
  std::byte* base() const { return base_; }

 protected:
  PagePool(const KvGeometry& geometry, int32_t num_blocks, PageMemory memory)
      : geometry_(geometry), num_blocks_(num_blocks), memory_(memory) {}
  std::byte* base_ = nullptr;  // set by the implementation's constructor

 private:
  KvGeometry geometry_;
  int32_t num_blocks_;
  PageMemory memory_;
};

// Pages in anonymous host memory (mmap: untouched pages cost no resident memory).
class HostPagePool final : public PagePool {
 public:
  // RESOURCE_EXHAUSTED when the mapping fails; INVALID_ARGUMENT for a bad geometry.
  static StatusOr<std::unique_ptr<HostPagePool>> Create(const KvGeometry& geometry,
                                                        int32_t num_blocks);
  ~HostPagePool() override;
  std::string_view kind() const override { return "host"; }

 private:
  HostPagePool(const KvGeometry& geometry, int32_t num_blocks)
      : PagePool(geometry, num_blocks, PageMemory::kHost) {}
};

}  // namespace tandem
