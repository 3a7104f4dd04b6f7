#include "tandem/engine/kv_staging.h"

#include <utility>

namespace tandem {

StatusOr<std::unique_ptr<KvStaging>> KvStaging::ForPool(PagePool& pool, bool shared) {
  if (pool.memory() == PageMemory::kHost) return std::unique_ptr<KvStaging>();
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<HostPagePool> mirror,
                          HostPagePool::Create(pool.geometry(), pool.num_blocks(), shared));
  return std::unique_ptr<KvStaging>(new KvStaging(pool, std::move(mirror)));
}

Status KvStaging::ToHost(int32_t layer, std::span<const int32_t> blocks) {
  TANDEM_RETURN_IF_ERROR(device_.CopyToHost(layer, blocks, *mirror_));
  staged_bytes_.fetch_add(static_cast<int64_t>(blocks.size() * device_.geometry().PageBytes()));
  return Status::Ok();
}

Status KvStaging::ToDevice(std::span<const int32_t> blocks) {
  for (int32_t layer = 0; layer < device_.geometry().num_layers; ++layer) {
    TANDEM_RETURN_IF_ERROR(device_.CopyFromHost(layer, blocks, *mirror_));
  }
  staged_bytes_.fetch_add(static_cast<int64_t>(blocks.size() * device_.geometry().BlockBytes()));
  return Status::Ok();
}

}  // namespace tandem
