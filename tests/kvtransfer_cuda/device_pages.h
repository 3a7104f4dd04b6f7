// Device memory for the cuda_ipc instantiation of the KV transport suite
// (tests/kvtransfer/transport_suite_test.cc built with TANDEM_TEST_CUDA_IPC): the receiver's
// exportable pool, senders' device pages, and host copies of both for the suite's checks. It
// runs on the CUDA interpreter in CI (label cuda_interp) and on a GPU in tools/gpu_check.sh.
#pragma once

#include <cuda_runtime.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/vmm.h"  // engine/src: the exportable allocation the CUDA backend's pools use
#include "tandem/common/device_ipc.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem::testing_kv {

// Why device 0 cannot share memory here ("" when it can: a GPU with the virtual memory API and
// POSIX file descriptor handles, or the interpreter): the suite skips then (no GPU in CI's CUDA
// build).
inline std::string NoDeviceIpcReason() {
  static const std::string why = [] {
    auto r = CreateCudaDeviceIpc(0);
    return r.ok() ? std::string() : r.status().ToString();
  }();
  return why;
}

// This process's DeviceIpc on device 0 (it outlives every transceiver of the test).
inline DeviceIpc& TestDeviceIpc() {
  static std::unique_ptr<DeviceIpc> ipc = [] {
    auto r = CreateCudaDeviceIpc(0);
    if (!r.ok()) {
      fprintf(stderr, "CreateCudaDeviceIpc: %s\n", r.status().ToString().c_str());
      std::abort();
    }
    return std::move(r).value();
  }();
  return *ipc;
}

// A receiver's page pool in exportable device memory, zeroed.
struct DevicePool {
  cuda_backend::ExportedAllocation alloc;
  std::unique_ptr<PagesAt> pages;
  size_t bytes = 0;
  mutable HostPageBuffer host;  // the last Snapshot()
  DevicePool(const KvPageLayout& layout, int32_t num_blocks) : host(layout, num_blocks) {}
  ~DevicePool() {
    if (alloc.fd >= 0) ::close(alloc.fd);
  }
  // The pool's bytes, copied to host memory now.
  const HostPageBuffer& Snapshot() const {
    cudaMemcpy(host.bytes().data(), alloc.mapping->base(), bytes, cudaMemcpyDeviceToHost);
    return host;
  }
};

inline std::unique_ptr<DevicePool> MakeDevicePool(const KvPageLayout& layout, int32_t num_blocks) {
  auto pool = std::make_unique<DevicePool>(layout, num_blocks);
  auto dev = cuda_backend::OpenVmmDevice(0);
  if (!dev.ok()) return nullptr;
  pool->bytes = layout.PageBytes() * size_t(layout.num_layers) * size_t(num_blocks);
  auto alloc = cuda_backend::CreateExportedAllocation(*dev, pool->bytes);
  if (!alloc.ok()) return nullptr;
  pool->alloc = std::move(alloc).value();
  if (cudaMemset(pool->alloc.mapping->base(), 0, pool->bytes) != cudaSuccess) return nullptr;
  pool->pages = std::make_unique<PagesAt>(pool->alloc.mapping->base(), layout, num_blocks);
  return pool;
}

// Device copies of host source pages, freed at Clear() (the end of each test).
class DeviceSources {
 public:
  static DeviceSources& Get() {
    static DeviceSources s;
    return s;
  }
  // `src` copied to device memory now, as device pages with the same block ids.
  const PageAccessor& Mirror(const KvPageLayout& layout, const HostPageBuffer& src) {
    void* p = nullptr;
    const size_t n = src.bytes().size();
    if (cudaMalloc(&p, n) != cudaSuccess ||
        cudaMemcpy(p, src.bytes().data(), n, cudaMemcpyHostToDevice) != cudaSuccess) {
      std::abort();
    }
    std::lock_guard<std::mutex> lock(mu_);
    buffers_.push_back(p);
    pages_.push_back(
        std::make_unique<PagesAt>(static_cast<std::byte*>(p), layout, src.num_blocks()));
    return *pages_.back();
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    for (void* p : buffers_) cudaFree(p);
    buffers_.clear();
    pages_.clear();
  }

 private:
  std::mutex mu_;
  std::vector<void*> buffers_;
  std::vector<std::unique_ptr<PagesAt>> pages_;
};

}  // namespace tandem::testing_kv
