#include "tandem/decode_worker/kv_pages.h"

#include <string>

#include "tandem/common/hash.h"

namespace tandem::decode {

StatusOr<KvPageLayout> MakeKvPageLayout(Engine& engine) {
  // config.json of a folder, the metadata and tensor table of a GGUF file.
  TANDEM_ASSIGN_OR_RETURN(std::string bytes, ReadModelIdentityBytes(engine.dir()));
  const KvLayout& kv = engine.kv_cache().layout();
  KvPageLayout layout;
  layout.num_layers = kv.num_layers;
  layout.num_kv_heads = kv.num_kv_heads;
  layout.head_dim = kv.head_dim;
  layout.page_size = kv.page_size;
  layout.dtype = KvDtype::kF32;
  layout.layout_version = KvPageLayout::kCurrentLayoutVersion;
  layout.model_hash = Hash64(bytes);
  TANDEM_RETURN_IF_ERROR(layout.Validate());
  return layout;
}

}  // namespace tandem::decode
