#include "tandem/decode_worker/kv_pages.h"

#include <fstream>
#include <sstream>

#include "tandem/common/hash.h"

namespace tandem::decode {

StatusOr<KvPageLayout> MakeKvPageLayout(Engine& engine) {
  const auto file = engine.dir() / "config.json";
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("cannot read {}", file.string());
  std::ostringstream bytes;
  bytes << in.rdbuf();
  const KvLayout& kv = engine.kv_cache().layout();
  KvPageLayout layout;
  layout.num_layers = kv.num_layers;
  layout.num_kv_heads = kv.num_kv_heads;
  layout.head_dim = kv.head_dim;
  layout.page_size = kv.page_size;
  layout.dtype = KvDtype::kF32;
  layout.layout_version = KvPageLayout::kCurrentLayoutVersion;
  layout.model_hash = Hash64(bytes.str());
  TANDEM_RETURN_IF_ERROR(layout.Validate());
  return layout;
}

}  // namespace tandem::decode
