#include "tandem/engine/page_pool.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <cstring>

namespace tandem {

StatusOr<std::unique_ptr<HostPagePool>> HostPagePool::Create(const KvGeometry& geometry,
                                                             int32_t num_blocks, bool shared) {
  if (geometry.num_layers <= 0 || geometry.num_kv_heads <= 0 || geometry.head_dim <= 0 ||
      geometry.page_size <= 0 || DTypeSize(geometry.dtype) == 0 || num_blocks <= 0) {
    return InvalidArgumentError(
        "bad KV geometry: layers {} kv_heads {} head_dim {} page_size {} dtype {} blocks {}",
        geometry.num_layers, geometry.num_kv_heads, geometry.head_dim, geometry.page_size,
        DTypeName(geometry.dtype), num_blocks);
  }
  auto pool = std::unique_ptr<HostPagePool>(new HostPagePool(geometry, num_blocks));
  if (shared) {
    pool->fd_ = memfd_create("tandem-kv-cache", MFD_CLOEXEC);
    if (pool->fd_ < 0 || ftruncate(pool->fd_, static_cast<off_t>(pool->bytes())) != 0) {
      return ResourceExhaustedError(
          "cannot create a shared memory file of {} bytes for {} KV "
          "blocks: {}",
          pool->bytes(), num_blocks, std::strerror(errno));
    }
  }
  void* p = shared ? mmap(nullptr, pool->bytes(), PROT_READ | PROT_WRITE, MAP_SHARED, pool->fd_, 0)
                   : mmap(nullptr, pool->bytes(), PROT_READ | PROT_WRITE,
                          MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhaustedError("cannot map {} bytes for {} KV blocks", pool->bytes(),
                                  num_blocks);
  }
  pool->base_ = static_cast<std::byte*>(p);
  return pool;
}

Status PagePool::CheckStaging(int32_t layer, std::span<const int32_t> blocks,
                              const PagePool& host) const {
  if (host.memory() != PageMemory::kHost) {
    return InvalidArgumentError("staging needs a host pool, got {}", host.kind());
  }
  const KvGeometry& a = geometry();
  const KvGeometry& b = host.geometry();
  if (a.num_layers != b.num_layers || a.num_kv_heads != b.num_kv_heads ||
      a.head_dim != b.head_dim || a.page_size != b.page_size || a.dtype != b.dtype) {
    return InvalidArgumentError("staging pool geometry differs from the {} pool's", kind());
  }
  if (layer < 0 || layer >= a.num_layers) {
    return InvalidArgumentError("staging: layer {} of {}", layer, a.num_layers);
  }
  const int32_t limit = std::min(num_blocks(), host.num_blocks());
  for (int32_t block : blocks) {
    if (block < 0 || block >= limit) {
      return InvalidArgumentError("staging: block {} of {}", block, limit);
    }
  }
  return Status::Ok();
}

Status PagePool::CopyToHost(int32_t layer, std::span<const int32_t> blocks, PagePool& host) const {
  TANDEM_RETURN_IF_ERROR(CheckStaging(layer, blocks, host));
  const size_t page = geometry().PageBytes();
  return ForEachRun(blocks, [&](int32_t first, int32_t count) {
    std::memcpy(host.Page(layer, first), Page(layer, first), page * count);
    return Status::Ok();
  });
}

Status PagePool::CopyFromHost(int32_t layer, std::span<const int32_t> blocks,
                              const PagePool& host) {
  TANDEM_RETURN_IF_ERROR(CheckStaging(layer, blocks, host));
  const size_t page = geometry().PageBytes();
  return ForEachRun(blocks, [&](int32_t first, int32_t count) {
    std::memcpy(Page(layer, first), host.Page(layer, first), page * count);
    return Status::Ok();
  });
}

HostPagePool::~HostPagePool() {
  if (base_ != nullptr) munmap(base_, bytes());
  if (fd_ >= 0) close(fd_);
}

}  // namespace tandem
