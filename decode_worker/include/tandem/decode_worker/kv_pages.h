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
class KvCachePages final : public PageAccessor {
 public:
  explicit KvCachePages(KvCache& cache) : cache_(cache) {}
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return {reinterpret_cast<std::byte*>(cache_.Page(layer, block)), cache_.geometry().PageBytes()};
  }

 private:
  KvCache& cache_;
};

}  // namespace tandem::decode
