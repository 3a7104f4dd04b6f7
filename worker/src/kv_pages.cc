#include "tandem/worker/kv_pages.h"

#include "tandem/common/hash.h"

namespace tandem {

KvPageLayout MakeKvPageLayout(Engine& engine) {
  return MakeKvPageLayout(engine.kv_cache().geometry(), engine.model_hash());
}

uint64_t TransferId(std::string_view request_id) { return Hash64(request_id); }

}  // namespace tandem
