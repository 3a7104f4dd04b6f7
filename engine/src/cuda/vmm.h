// The CUDA driver's virtual memory management (VMM) calls, for device memory that other
// processes may map: exportable KV page pools (device_memory.h) and DeviceIpc's imports
// (device_ipc.cc). Private to engine/src/cuda.
//
// The driver functions come through the runtime (cudaGetDriverEntryPointByVersion), so no binary
// links libcuda: it is absent on machines without a GPU, where the interpreter flavour's runtime
// answers with its stand-in of these calls (kernels/interp/README.md).
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::cuda_backend {

// The driver entry points used here (the versions of CUDA 12.0's headers).
struct DriverVmm {
  PFN_cuGetErrorString_v6000 get_error_string = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetAttribute_v2000 device_get_attribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 mem_get_allocation_granularity = nullptr;
  PFN_cuMemCreate_v10020 mem_create = nullptr;
  PFN_cuMemRelease_v10020 mem_release = nullptr;
  PFN_cuMemAddressReserve_v10020 mem_address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 mem_address_free = nullptr;
  PFN_cuMemMap_v10020 mem_map = nullptr;
  PFN_cuMemUnmap_v10020 mem_unmap = nullptr;
  PFN_cuMemSetAccess_v10020 mem_set_access = nullptr;
  PFN_cuMemExportToShareableHandle_v10020 mem_export_to_shareable_handle = nullptr;
  PFN_cuMemImportFromShareableHandle_v10020 mem_import_from_shareable_handle = nullptr;
};

// The driver table, looked up once per process. UNAVAILABLE naming the first entry point the
// runtime does not give (no driver, or one too old).
StatusOr<const DriverVmm*> Driver();

// OK for CUDA_SUCCESS, else INTERNAL (RESOURCE_EXHAUSTED for CUDA_ERROR_OUT_OF_MEMORY) with
// `what` and the driver's message.
Status CuStatus(const DriverVmm& d, CUresult r, std::string_view what);

// What exportable allocations on one device need: the device's handle, and its allocation
// granularity for pinned device memory exportable as a POSIX file descriptor.
struct VmmDevice {
  const DriverVmm* driver = nullptr;
  int ordinal = 0;
  CUdevice device = 0;
  size_t granularity = 0;
  CUmemAllocationProp prop{};  // pinned, on `device`, POSIX fd handles
  size_t RoundUp(size_t bytes) const {
    return (bytes + granularity - 1) / granularity * granularity;
  }
};

// Makes `ordinal` current (initialising its primary context) and checks that it supports the
// VMM API with POSIX file descriptor handles: UNAVAILABLE saying which is missing otherwise.
StatusOr<VmmDevice> OpenVmmDevice(int ordinal);

// A generic allocation mapped read-write for its device at a reserved address range of
// `bytes` (a multiple of the granularity). Unmaps, frees the range and releases the handle on
// destruction. Not copyable or movable: the address is the identity.
class VmmMapping {
 public:
  // Takes ownership of `handle` (released here on failure too). INVALID_ARGUMENT when the
  // allocation is smaller than `bytes` (cuMemMap refuses the range); the driver's error otherwise.
  static StatusOr<std::unique_ptr<VmmMapping>> Map(const VmmDevice& dev,
                                                   CUmemGenericAllocationHandle handle,
                                                   size_t bytes);
  ~VmmMapping();
  VmmMapping(const VmmMapping&) = delete;
  VmmMapping& operator=(const VmmMapping&) = delete;

  std::byte* base() const { return reinterpret_cast<std::byte*>(static_cast<uintptr_t>(ptr_)); }
  size_t bytes() const { return bytes_; }
  CUmemGenericAllocationHandle handle() const { return handle_; }

 private:
  VmmMapping(const DriverVmm* d, CUmemGenericAllocationHandle handle, size_t bytes)
      : driver_(d), handle_(handle), bytes_(bytes) {}
  const DriverVmm* driver_;
  CUmemGenericAllocationHandle handle_;
  size_t bytes_;
  CUdeviceptr ptr_ = 0;  // reserved range; 0 until reserved
  bool mapped_ = false;
};

// An exportable allocation of at least `bytes` (rounded up to the granularity) on `dev`, mapped
// read-write, and its POSIX file descriptor (owned by the caller, close-on-exec as the driver
// gives it). RESOURCE_EXHAUSTED when the device is out of memory.
struct ExportedAllocation {
  std::unique_ptr<VmmMapping> mapping;
  int fd = -1;
};
StatusOr<ExportedAllocation> CreateExportedAllocation(const VmmDevice& dev, size_t bytes);

}  // namespace tandem::cuda_backend
