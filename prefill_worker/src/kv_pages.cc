#include "tandem/prefill_worker/kv_pages.h"

#include <string>

#include "tandem/common/hash.h"
#include "tandem/engine/model_config.h"

namespace tandem {

StatusOr<KvPageLayout> MakeKvPageLayout(const KvLayout& layout,
                                        const std::filesystem::path& model_dir) {
  // config.json of a folder, the metadata and tensor table of a GGUF file.
  TANDEM_ASSIGN_OR_RETURN(std::string bytes, ReadModelIdentityBytes(model_dir));
  KvPageLayout out;
  out.num_layers = layout.num_layers;
  out.num_kv_heads = layout.num_kv_heads;
  out.head_dim = layout.head_dim;
  out.page_size = layout.page_size;
  out.dtype = KvDtype::kF32;
  out.layout_version = KvPageLayout::kCurrentLayoutVersion;
  out.model_hash = Hash64(bytes);
  return out;
}

}  // namespace tandem
