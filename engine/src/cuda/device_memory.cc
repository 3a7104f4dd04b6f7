// DevicePagePool (device_memory.h): KV pages in device memory, and their host staging copies.
#include "cuda/device_memory.h"

#include <unistd.h>

namespace tandem::cuda_backend {

StatusOr<std::unique_ptr<DevicePagePool>> DevicePagePool::Create(const KvGeometry& geometry,
                                                                 int32_t num_blocks,
                                                                 bool exportable) {
  if (geometry.num_layers <= 0 || geometry.num_kv_heads <= 0 || geometry.head_dim <= 0 ||
      geometry.page_size <= 0 || DTypeSize(geometry.dtype) == 0 || num_blocks <= 0) {
    return InvalidArgumentError("bad KV geometry for device pages: layers {} blocks {}",
                                geometry.num_layers, num_blocks);
  }
  auto pool = std::unique_ptr<DevicePagePool>(new DevicePagePool(geometry, num_blocks));
  TANDEM_CUDA_STATUS(cudaGetDevice(&pool->device_));
  if (exportable) {
    TANDEM_ASSIGN_OR_RETURN(const VmmDevice dev, OpenVmmDevice(pool->device_));
    TANDEM_ASSIGN_OR_RETURN(ExportedAllocation a, CreateExportedAllocation(dev, pool->bytes()));
    pool->mapping_ = std::move(a.mapping);
    pool->fd_ = a.fd;
    pool->base_ = pool->mapping_->base();
  } else {
    TANDEM_RETURN_IF_ERROR(pool->memory_.Allocate(pool->bytes()));
    pool->base_ = pool->memory_.template get<std::byte>();
  }
  return pool;
}

DevicePagePool::~DevicePagePool() {
  mapping_.reset();  // unmaps, frees the address range, releases the allocation
  if (fd_ >= 0) close(fd_);
}

Status DevicePagePool::CopyToHost(int32_t layer, std::span<const int32_t> blocks,
                                  PagePool& host) const {
  TANDEM_RETURN_IF_ERROR(CheckStaging(layer, blocks, host));
  if (blocks.empty()) return Status::Ok();
  TANDEM_CUDA_STATUS(cudaSetDevice(device_));  // the calling thread may have another current
  const size_t page = geometry().PageBytes();
  return ForEachRun(blocks, [&](int32_t first, int32_t count) {
    return CudaStatus(cudaMemcpy(host.Page(layer, first), Page(layer, first), page * count,
                                 cudaMemcpyDeviceToHost),
                      "cudaMemcpy KV pages device to host");
  });
}

Status DevicePagePool::CopyFromHost(int32_t layer, std::span<const int32_t> blocks,
                                    const PagePool& host) {
  TANDEM_RETURN_IF_ERROR(CheckStaging(layer, blocks, host));
  if (blocks.empty()) return Status::Ok();
  TANDEM_CUDA_STATUS(cudaSetDevice(device_));
  const size_t page = geometry().PageBytes();
  TANDEM_RETURN_IF_ERROR(ForEachRun(blocks, [&](int32_t first, int32_t count) {
    return CudaStatus(cudaMemcpy(Page(layer, first), host.Page(layer, first), page * count,
                                 cudaMemcpyHostToDevice),
                      "cudaMemcpy KV pages host to device");
  }));
  // A pageable host → device cudaMemcpy may return before the DMA lands; the runner's stream is
  // non-blocking (not ordered after the legacy stream), so wait here.
  TANDEM_CUDA_STATUS(cudaDeviceSynchronize());
  return Status::Ok();
}

}  // namespace tandem::cuda_backend
