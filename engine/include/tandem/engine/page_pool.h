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
#include <span>
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
  // Bytes of the whole region.
  size_t bytes() const { return size_t(num_blocks_) * geometry_.BlockBytes(); }

  // Start of page (layer, block).
  std::byte* Page(int32_t layer, int32_t block) const {
    return base_ + (size_t(layer) * num_blocks_ + block) * geometry_.PageBytes();
  }
  std::byte* base() const { return base_; }
  // The memfd behind a host pool in shared memory (the shm KV transport hands it to same-host
  // senders), else -1.
  virtual int shared_fd() const { return -1; }

  // Host staging (transports that move bytes through host memory, for a kDevice pool): copies
  // pages (layer, blocks[i]) of this pool into / from the same pages of `host`, a host-memory
  // pool of the same geometry with at least as many blocks. Runs of consecutive block ids are
  // copied as one range. The copy has completed when the call returns: CopyToHost reads what
  // the device wrote before the call (the runner's LayerWrittenFn runs after the layer's K/V
  // write completed), and kernels enqueued after CopyFromHost see the copied bytes.
  // Default (host pools): memcpy. INVALID_ARGUMENT for a mismatched pool or a block out of
  // range; the device's error (INTERNAL) when a copy fails.
  // Thread safety: as for Page(): the caller owns the pages it copies.
  virtual Status CopyToHost(int32_t layer, std::span<const int32_t> blocks, PagePool& host) const;
  virtual Status CopyFromHost(int32_t layer, std::span<const int32_t> blocks, const PagePool& host);

 protected:
  // INVALID_ARGUMENT unless `host` is host memory of this geometry, `layer` is a layer and
  // every block is below both pools' block counts.
  Status CheckStaging(int32_t layer, std::span<const int32_t> blocks, const PagePool& host) const;
  // Calls copy(first_block, count) for each run of consecutive block ids, in order; stops at
  // the first error.
  template <typename Fn>
  static Status ForEachRun(std::span<const int32_t> blocks, Fn&& copy) {
    size_t i = 0;
    while (i < blocks.size()) {
      size_t j = i + 1;
      while (j < blocks.size() && blocks[j] == blocks[j - 1] + 1) ++j;
      Status s = copy(blocks[i], static_cast<int32_t>(j - i));
      if (!s.ok()) return s;
      i = j;
    }
    return Status::Ok();
  }

  PagePool(const KvGeometry& geometry, int32_t num_blocks, PageMemory memory)
      : geometry_(geometry), num_blocks_(num_blocks), memory_(memory) {}
  std::byte* base_ = nullptr;  // set by the implementation's constructor

 private:
  KvGeometry geometry_;
  int32_t num_blocks_;
  PageMemory memory_;
};

// Pages in host memory (mmap: untouched pages cost no resident memory): anonymous ("host"), or
// with `shared` a memfd ("shm") that other processes on this host may map (shared_fd()).
class HostPagePool final : public PagePool {
 public:
  // RESOURCE_EXHAUSTED when the mapping fails; INVALID_ARGUMENT for a bad geometry.
  static StatusOr<std::unique_ptr<HostPagePool>> Create(const KvGeometry& geometry,
                                                        int32_t num_blocks, bool shared = false);
  ~HostPagePool() override;
  std::string_view kind() const override { return fd_ >= 0 ? "shm" : "host"; }
  int shared_fd() const override { return fd_; }

 private:
  HostPagePool(const KvGeometry& geometry, int32_t num_blocks)
      : PagePool(geometry, num_blocks, PageMemory::kHost) {}
  int fd_ = -1;
};

}  // namespace tandem
