#include "tandem/engine/kv_cache.h"

#include "tandem/common/logging.h"

namespace tandem {

KvCache::KvCache(std::unique_ptr<PagePool> pool)
    : pool_(std::move(pool)), allocator_(pool_->num_blocks()) {}

KvCache::KvCache(const KvGeometry& geometry, int32_t num_blocks)
    : KvCache([&] {
        auto pool = HostPagePool::Create(geometry, num_blocks);
        TANDEM_CHECK(pool.ok());
        return std::unique_ptr<PagePool>(std::move(pool).value());
      }()) {}

}  // namespace tandem
