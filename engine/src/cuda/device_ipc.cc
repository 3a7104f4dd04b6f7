// DeviceIpc (tandem/common/device_ipc.h) on the CUDA backend: imports a peer's exported pool
// with the driver's VMM API (vmm.h) and copies device to device on a stream of its own.
// Registered with CreateCudaDeviceIpc (tandem/engine/cuda_runner.h) by both flavours.
#include <cuda_runtime.h>
#include <fcntl.h>

#include <mutex>
#include <string>

#include <fmt/format.h>

#include "cuda/device_memory.h"
#include "cuda/vmm.h"
#include "tandem/common/device_ipc.h"
#include "tandem/engine/cuda_runner.h"

namespace tandem::cuda_backend {
namespace {

class CudaDeviceMapping final : public DeviceMapping {
 public:
  CudaDeviceMapping(std::unique_ptr<VmmMapping> mapping, size_t bytes)
      : mapping_(std::move(mapping)), bytes_(bytes) {}
  std::byte* base() const override { return mapping_->base(); }
  size_t bytes() const override { return bytes_; }

 private:
  std::unique_ptr<VmmMapping> mapping_;
  size_t bytes_;
};

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi -L names the device.
std::string UuidName(const cudaUUID_t& uuid) {
  std::string s = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", static_cast<unsigned char>(uuid.bytes[i]));
  }
  return s;
}

class CudaDeviceIpc final : public DeviceIpc {
 public:
  static StatusOr<std::unique_ptr<DeviceIpc>> Create(int32_t device) {
    TANDEM_RETURN_IF_ERROR(CheckDeviceExists(device, "cuda_ipc"));
    TANDEM_ASSIGN_OR_RETURN(VmmDevice dev, OpenVmmDevice(device));
    cudaDeviceProp prop{};
    TANDEM_CUDA_STATUS(cudaGetDeviceProperties(&prop, device));
    auto ipc = std::unique_ptr<CudaDeviceIpc>(new CudaDeviceIpc(dev, UuidName(prop.uuid)));
    TANDEM_CUDA_STATUS(cudaStreamCreateWithFlags(&ipc->stream_, cudaStreamNonBlocking));
    return std::unique_ptr<DeviceIpc>(std::move(ipc));
  }

  ~CudaDeviceIpc() override {
    if (stream_ != nullptr) {
      (void)cudaSetDevice(dev_.ordinal);
      (void)cudaStreamDestroy(stream_);
    }
  }

  const std::string& device_id() const override { return device_id_; }

  StatusOr<std::unique_ptr<DeviceMapping>> Import(int fd, size_t bytes) override {
    if (bytes == 0) return InvalidArgumentError("cuda_ipc: importing 0 bytes of fd {}", fd);
    if (fd < 0 || fcntl(fd, F_GETFD) < 0) {
      return InvalidArgumentError("cuda_ipc: fd {} is not an open file descriptor", fd);
    }
    const DriverVmm& d = *dev_.driver;
    TANDEM_CUDA_STATUS(cudaSetDevice(dev_.ordinal));  // the calling thread may have another
    CUmemGenericAllocationHandle handle{};
    const CUresult r = d.mem_import_from_shareable_handle(
        &handle, reinterpret_cast<void*>(static_cast<uintptr_t>(fd)),
        CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) {
      return CuStatus(d, r, "cuda_ipc: cuMemImportFromShareableHandle");
    }
    if (r != CUDA_SUCCESS) {
      return InvalidArgumentError("cuda_ipc: fd {} is not an exported device allocation ({})", fd,
                                  CuStatus(d, r, "cuMemImportFromShareableHandle").message());
    }
    auto mapped = VmmMapping::Map(dev_, handle, dev_.RoundUp(bytes));
    if (!mapped.ok()) {
      const Status& s = mapped.status();
      return Status(s.code(), fmt::format("cuda_ipc: importing {} bytes of fd {}: {}", bytes, fd,
                                          s.message()));
    }
    return std::unique_ptr<DeviceMapping>(
        std::make_unique<CudaDeviceMapping>(std::move(mapped).value(), bytes));
  }

  Status Copy(std::span<const DeviceCopy> copies) override {
    std::lock_guard<std::mutex> lock(mu_);
    TANDEM_CUDA_STATUS(cudaSetDevice(dev_.ordinal));
    Status enqueued = Status::Ok();
    for (const DeviceCopy& c : copies) {
      if (c.bytes == 0) continue;
      enqueued =
          CudaStatus(cudaMemcpyAsync(c.dst, c.src, c.bytes, cudaMemcpyDeviceToDevice, stream_),
                     "cuda_ipc: cudaMemcpyAsync device to device");
      if (!enqueued.ok()) break;
    }
    // Wait for what was enqueued even after a failure: the caller may reuse the memory.
    const Status synced =
        CudaStatus(cudaStreamSynchronize(stream_), "cuda_ipc: cudaStreamSynchronize");
    return enqueued.ok() ? synced : enqueued;
  }

 private:
  CudaDeviceIpc(const VmmDevice& dev, std::string device_id)
      : dev_(dev), device_id_(std::move(device_id)) {}

  const VmmDevice dev_;
  const std::string device_id_;
  std::mutex mu_;  // serializes Copy on stream_
  cudaStream_t stream_ = nullptr;
};

StatusOr<std::unique_ptr<DeviceIpc>> CreateDeviceIpc(int32_t device) {
  return CudaDeviceIpc::Create(device);
}

}  // namespace
}  // namespace tandem::cuda_backend

namespace tandem {
namespace {

// Linked whole into the binaries that carry the backend (an OBJECT library), so this runs.
[[maybe_unused]] const bool registered_ipc = RegisterCudaDeviceIpc(&cuda_backend::CreateDeviceIpc);

}  // namespace
}  // namespace tandem
