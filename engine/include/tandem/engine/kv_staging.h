// KvStaging: a host mirror of a device PagePool, for KV transports that move bytes through host
// memory (the TCP data plane, see DESIGN.md "KV transfer"). The transport reads and writes the
// mirror's pages; the worker copies a request's pages device → mirror before a layer is
// announced (prefill) and mirror → device once the transfer completed (decode). The mirror is a
// HostPagePool of the device pool's geometry and block count, so block ids are shared and only
// touched pages cost resident memory.
//
// Thread safety: the copies may run on any thread, for pages the caller owns (as PagePool's);
// staged_bytes / TakeStagedBytes are atomic.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>

#include "tandem/common/status.h"
#include "tandem/engine/page_pool.h"

namespace tandem {

class KvStaging {
 public:
  // nullptr (no staging: the transport uses the pool's pages) for a host pool; else a mirror.
  // RESOURCE_EXHAUSTED when the mirror cannot be mapped.
  // `shared`: the mirror lives in shared memory (the shm transport writes into it).
  static StatusOr<std::unique_ptr<KvStaging>> ForPool(PagePool& pool, bool shared = false);

  // The pages the transport reads and writes.
  PagePool& mirror() { return *mirror_; }
  const PagePool& mirror() const { return *mirror_; }

  // Pages (layer, blocks) device → mirror.
  Status ToHost(int32_t layer, std::span<const int32_t> blocks);
  // Pages (every layer, blocks) mirror → device.
  Status ToDevice(std::span<const int32_t> blocks);

  // Bytes copied either way since creation / since the last TakeStagedBytes.
  int64_t staged_bytes() const { return staged_bytes_.load(); }
  // (Concurrent callers each get a disjoint share: the sum of what they return is the total.)
  int64_t TakeStagedBytes() {
    const int64_t now = staged_bytes_.load();
    int64_t prev = reported_.load();
    while (prev < now && !reported_.compare_exchange_weak(prev, now)) {
    }
    return prev < now ? now - prev : 0;
  }

 private:
  KvStaging(PagePool& device, std::unique_ptr<PagePool> mirror)
      : device_(device), mirror_(std::move(mirror)) {}

  PagePool& device_;
  std::unique_ptr<PagePool> mirror_;
  std::atomic<int64_t> staged_bytes_{0};
  std::atomic<int64_t> reported_{0};
};

}  // namespace tandem
