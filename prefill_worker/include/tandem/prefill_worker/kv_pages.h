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

// Exposes a KvCache's pages to the Transceiver. The cache must outlive the accessor.
class KvCachePages final : public PageAccessor {
 public:
  explicit KvCachePages(KvCache& cache) : cache_(cache) {}
  std::span<std::byte> Page(int32_t layer, int32_t block) const override {
    return {reinterpret_cast<std::byte*>(cache_.Page(layer, block)), cache_.geometry().PageBytes()};
  }

 private:
  KvCache& cache_;
};

}  // namespace tandem
