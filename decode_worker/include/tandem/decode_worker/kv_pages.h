// Glue between the engine's KV cache and kvtransfer: a PageAccessor over KvCache pages and
// the engine KvLayout → kvtransfer KvPageLayout mapping.
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
    return {reinterpret_cast<std::byte*>(cache_.Page(layer, block)), cache_.layout().PageBytes()};
  }

 private:
  KvCache& cache_;
};

// The wire layout of `engine`'s pages: f32, the current layout version, and model_hash =
// Hash64 of ReadModelIdentityBytes(engine.dir()): config.json of a folder, the metadata of a GGUF
// file (IO errors → NOT_FOUND / DATA_LOSS).
StatusOr<KvPageLayout> MakeKvPageLayout(Engine& engine);

}  // namespace tandem::decode
