// Device memory for the CUDA backend: a status for a cudaError_t, an owning device buffer, and
// the PagePool whose pages live in device memory (plain, or exportable to other processes).
// Private to engine/src/cuda.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <utility>

#include "cuda/vmm.h"
#include "tandem/common/status.h"
#include "tandem/engine/page_pool.h"

namespace tandem::cuda_backend {

// OK for cudaSuccess, else INTERNAL (RESOURCE_EXHAUSTED for an allocation failure) with `what`
// and the runtime's message.
inline Status CudaStatus(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return Status::Ok();
  (void)cudaGetLastError();  // clear a non-sticky error so later calls are not blamed for it
  if (e == cudaErrorMemoryAllocation) {
    return ResourceExhaustedError("{}: {}", what, cudaGetErrorString(e));
  }
  return InternalError("{}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

// OK when CUDA device `device` exists; else UNAVAILABLE starting with `who`: "no usable CUDA
// device" with the runtime's message (no GPU, no driver), or the device count.
inline Status CheckDeviceExists(int32_t device, std::string_view who) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return UnavailableError("{}: no usable CUDA device ({}: {})", who, cudaGetErrorName(e),
                            cudaGetErrorString(e));
  }
  if (device < 0 || device >= count) {
    return UnavailableError("{}: device {} does not exist ({} CUDA devices)", who, device, count);
  }
  return Status::Ok();
}

#define TANDEM_CUDA_STATUS(expr) \
  TANDEM_RETURN_IF_ERROR(::tandem::cuda_backend::CudaStatus((expr), #expr))

// cudaMalloc'd bytes, freed on destruction. Grow() reallocates (contents lost) when more bytes
// are needed; callers synchronize the stream that used the old memory before growing.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }

  Status Allocate(size_t bytes) {
    Reset();
    if (bytes == 0) return Status::Ok();
    TANDEM_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr_, bytes), "cudaMalloc"));
    bytes_ = bytes;
    return Status::Ok();
  }
  // Keeps the buffer when it is already large enough; otherwise reallocates with headroom.
  Status Grow(size_t bytes) {
    if (bytes <= bytes_) return Status::Ok();
    return Allocate(bytes + bytes / 2);
  }
  void Reset() {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }

  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// KV pages in one region of the current device's memory: cudaMalloc'd, or with `exportable`
// an allocation of the CUDA virtual memory management API (cuMemCreate, pinned on the device,
// its size rounded up to the allocation granularity) mapped read-write, whose POSIX file
// descriptor shared_fd() gives for the pool's life (the cuda_ipc KV transport passes it to
// same-host senders, which map it with DeviceIpc::Import). The region's kind is "cuda" either way.
class DevicePagePool final : public PagePool {
 public:
  // INVALID_ARGUMENT for a bad geometry; RESOURCE_EXHAUSTED when the device is out of memory;
  // with `exportable`, UNAVAILABLE when the device or driver cannot export allocations as POSIX
  // file descriptors.
  static StatusOr<std::unique_ptr<DevicePagePool>> Create(const KvGeometry& geometry,
                                                          int32_t num_blocks,
                                                          bool exportable = false);
  ~DevicePagePool() override;
  std::string_view kind() const override { return "cuda"; }
  int shared_fd() const override { return fd_; }
  // cudaMemcpy per run of consecutive blocks, on the pool's device. Device → host returns once
  // the bytes are in host memory; host → device ends with a device synchronization, so every
  // stream (the runner's is non-blocking) sees the pages. Neither waits for kernels still
  // writing other pages beyond what cudaMemcpy itself orders: callers copy pages whose writes
  // completed (see PagePool).
  Status CopyToHost(int32_t layer, std::span<const int32_t> blocks, PagePool& host) const override;
  Status CopyFromHost(int32_t layer, std::span<const int32_t> blocks,
                      const PagePool& host) override;

 private:
  DevicePagePool(const KvGeometry& geometry, int32_t num_blocks)
      : PagePool(geometry, num_blocks, PageMemory::kDevice) {}
  DeviceBuffer memory_;                  // the cudaMalloc'd region, or
  std::unique_ptr<VmmMapping> mapping_;  // the exportable one
  int fd_ = -1;                          // mapping_'s POSIX file descriptor
  int device_ = 0;                       // the device current at Create
};

}  // namespace tandem::cuda_backend
