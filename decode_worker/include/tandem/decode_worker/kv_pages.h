// Glue between the engine's KV cache and kvtransfer: a PageAccessor over KvCache pages (the
// wire layout is MakeKvPageLayout(cache geometry, Engine::model_hash()), as on the prefill side).
//
// Thread safety: KvCachePages only hands out spans; who may write a page is decided by the
// page's owner (the reservation table while a transfer runs, the engine loop afterwards).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tandem/common/status.h"
#include "tandem/engine/engine.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem::decode {

// (Nested namespace: the prefill worker has its own helpers with these names.)
// Over a host PagePool: the engine's KvCache pool, or for device pages the KvStaging mirror
// (the engine loop copies a request's pages to the device once its transfer completed).
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

}  // namespace tandem::decode
