#include "tandem/engine/page_pool.h"

#include <sys/mman.h>

namespace tandem {

StatusOr<std::unique_ptr<HostPagePool>> HostPagePool::Create(const KvGeometry& geometry,
                                                             int32_t num_blocks) {
  if (geometry.num_layers <= 0 || geometry.num_kv_heads <= 0 || geometry.head_dim <= 0 ||
      geometry.page_size <= 0 || DTypeSize(geometry.dtype) == 0 || num_blocks <= 0) {
    return InvalidArgumentError(
        "bad KV geometry: layers {} kv_heads {} head_dim {} page_size {} dtype {} blocks {}",
        geometry.num_layers, geometry.num_kv_heads, geometry.head_dim, geometry.page_size,
        DTypeName(geometry.dtype), num_blocks);
  }
  auto pool = std::unique_ptr<HostPagePool>(new HostPagePool(geometry, num_blocks));
  void* p =
      mmap(nullptr, pool->bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhaustedError("cannot map {} bytes for {} KV blocks", pool->bytes(),
                                  num_blocks);
  }
  pool->base_ = static_cast<std::byte*>(p);
  return pool;
}

HostPagePool::~HostPagePool() {
  if (base_ != nullptr) munmap(base_, bytes());
}

}  // namespace tandem
