// Glue between the engine's KV cache and kvtransfer: the PageAccessor over a KvCache and the
// KvLayout -> KvPageLayout mapping. The decode worker uses the same rule, so both ends compute
// the same fingerprint for the same checkpoint:
//   num_layers / num_kv_heads / head_dim / page_size copied from KvLayout, dtype kF32,
//   layout_version kCurrentLayoutVersion, model_hash = Hash64(ReadModelIdentityBytes(model)):
//   <model dir>/config.json, or a GGUF file's header, metadata and tensor table.
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
    return {reinterpret_cast<std::byte*>(cache_.Page(layer, block)), cache_.layout().PageBytes()};
  }

 private:
  KvCache& cache_;
};

// The page layout of `layout` for the checkpoint in `model_dir` (a folder: reads its config.json;
// a .gguf file: its metadata).
// NOT_FOUND / DATA_LOSS when they cannot be read.
StatusOr<KvPageLayout> MakeKvPageLayout(const KvLayout& layout,
                                        const std::filesystem::path& model_dir);

}  // namespace tandem
