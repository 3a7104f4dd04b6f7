#include "tandem/prefill_worker/kv_pages.h"

#include <fstream>
#include <iterator>
#include <string>

#include "tandem/common/hash.h"

namespace tandem {

StatusOr<KvPageLayout> MakeKvPageLayout(const KvLayout& layout,
                                        const std::filesystem::path& model_dir) {
  const std::filesystem::path config = model_dir / "config.json";
  std::ifstream in(config, std::ios::binary);
  if (!in) return NotFoundError("cannot read {}", config.string());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) return DataLossError("error reading {}", config.string());
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
