// Device memory shared between processes on one host: what the cuda_ipc KV transport needs from
// a GPU backend (DESIGN.md "KV transfer"). The receiver (decode worker) allocates its KV page
// pool as exportable device memory and passes the allocation's POSIX file descriptor once to
// each same-host sender over a Unix socket; the sender imports it with Import and copies each
// computed layer from its own device pages straight into the receiver's with Copy.
//
// kvtransfer depends on this interface only; the CUDA backend implements it
// (tandem/engine/cuda_runner.h: CreateCudaDeviceIpc), with the CUDA virtual memory API on a GPU
// and with the CPU interpreter's stand-in for that API in CI.
//
// Thread safety: Import and Copy may be called from any thread; DeviceMapping is immutable.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "tandem/common/status.h"

namespace tandem {

// A peer's exported device allocation, mapped read-write into this process on this object's
// device. Unmapped, and the import released, on destruction (before the DeviceIpc that made it
// is destroyed).
class DeviceMapping {
 public:
  virtual ~DeviceMapping() = default;
  // A device address: only DeviceIpc::Copy and kernels may touch the bytes.
  virtual std::byte* base() const = 0;
  virtual size_t bytes() const = 0;
};

// One device → device copy of `bytes` bytes.
struct DeviceCopy {
  std::byte* dst = nullptr;
  const std::byte* src = nullptr;
  size_t bytes = 0;
};

class DeviceIpc {
 public:
  virtual ~DeviceIpc() = default;
  // Names this object's device for peers, e.g. "GPU-8f3c…" (the CUDA UUID): a sender only
  // imports a pool when both sides name the same device (or peer access between them works).
  virtual const std::string& device_id() const = 0;
  // Maps the first `bytes` of the allocation a peer exported as POSIX file descriptor `fd` (the
  // caller keeps `fd`; it may close it once this returns). The exporter allocated `bytes`
  // rounded up to the device's allocation granularity, as Import rounds it. INVALID_ARGUMENT
  // when `fd` is not an exported allocation or is smaller than `bytes`; the driver's error
  // (INTERNAL, RESOURCE_EXHAUSTED) otherwise.
  virtual StatusOr<std::unique_ptr<DeviceMapping>> Import(int fd, size_t bytes) = 0;
  // Copies device → device in order on this object's own stream and returns once every byte
  // has landed (so the caller may then tell the peer). Calls from several threads serialize.
  // The driver's error (INTERNAL) when a copy fails.
  virtual Status Copy(std::span<const DeviceCopy> copies) = 0;
};

}  // namespace tandem
