// Glue between the engine's KV cache and kvtransfer: the PageAccessor over a KvCache (the wire
// layout is MakeKvPageLayout(cache geometry, Engine::model_hash()), as on the decode side).
//
// Thread safety: KvCachePages is stateless beyond its reference; Page() may be called from any
// thread (the Transceiver's I/O threads read pages through it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem {

// Exposes a host PagePool's pages to the Transceiver: the engine's KvCache pool, or for device
// pages the KvStaging mirror. The pool must outlive the accessor.
class KvCachePages final : public PageAccessor {
 public:
  explicit KvCachePages(const PagePool& pool) : pool_(pool) {}
  explicit KvCachePages(const KvCache& cache) : pool_(cache.pool()) {}
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return {pool_.Page(layer, block), pool_.geometry().PageBytes()};
  }

 private:
  const PagePool& pool_;
};

}  // namespace tandem
