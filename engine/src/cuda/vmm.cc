// The driver's VMM calls through the runtime's entry-point lookup (vmm.h).
#include "cuda/vmm.h"

#include <cuda_runtime.h>
#include <unistd.h>

#include "cuda/device_memory.h"

namespace tandem::cuda_backend {
namespace {

// The driver ABI asked for: CUDA 12.0 (every entry point here is older).
constexpr unsigned kDriverApiVersion = 12000;

template <typename Fn>
Status Lookup(const char* symbol, Fn* out) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t e =
      cudaGetDriverEntryPointByVersion(symbol, &fn, kDriverApiVersion, cudaEnableDefault, &found);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return UnavailableError("the CUDA driver entry point {} is not available ({}: {})", symbol,
                            cudaGetErrorName(e), cudaGetErrorString(e));
  }
  if (fn == nullptr || found != cudaDriverEntryPointSuccess) {
    return UnavailableError(
        "the CUDA driver has no entry point {} for CUDA {}.{} ({})", symbol,
        kDriverApiVersion / 1000, kDriverApiVersion % 1000 / 10,
        found == cudaDriverEntryPointVersionNotSufficent ? "driver too old" : "symbol not found");
  }
  *out = reinterpret_cast<Fn>(fn);
  return Status::Ok();
}

Status LoadDriver(DriverVmm* d) {
  TANDEM_RETURN_IF_ERROR(Lookup("cuGetErrorString", &d->get_error_string));
  TANDEM_RETURN_IF_ERROR(Lookup("cuDeviceGet", &d->device_get));
  TANDEM_RETURN_IF_ERROR(Lookup("cuDeviceGetAttribute", &d->device_get_attribute));
  TANDEM_RETURN_IF_ERROR(
      Lookup("cuMemGetAllocationGranularity", &d->mem_get_allocation_granularity));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemCreate", &d->mem_create));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemRelease", &d->mem_release));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemAddressReserve", &d->mem_address_reserve));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemAddressFree", &d->mem_address_free));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemMap", &d->mem_map));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemUnmap", &d->mem_unmap));
  TANDEM_RETURN_IF_ERROR(Lookup("cuMemSetAccess", &d->mem_set_access));
  TANDEM_RETURN_IF_ERROR(
      Lookup("cuMemExportToShareableHandle", &d->mem_export_to_shareable_handle));
  TANDEM_RETURN_IF_ERROR(
      Lookup("cuMemImportFromShareableHandle", &d->mem_import_from_shareable_handle));
  return Status::Ok();
}

}  // namespace

StatusOr<const DriverVmm*> Driver() {
  struct Loaded {
    DriverVmm driver;
    Status status;
  };
  static const Loaded* loaded = [] {
    auto* l = new Loaded();
    l->status = LoadDriver(&l->driver);
    return l;
  }();
  if (!loaded->status.ok()) return loaded->status;
  return &loaded->driver;
}

Status CuStatus(const DriverVmm& d, CUresult r, std::string_view what) {
  if (r == CUDA_SUCCESS) return Status::Ok();
  const char* msg = nullptr;
  if (d.get_error_string == nullptr || d.get_error_string(r, &msg) != CUDA_SUCCESS ||
      msg == nullptr) {
    msg = "unknown error";
  }
  if (r == CUDA_ERROR_OUT_OF_MEMORY) return ResourceExhaustedError("{}: {}", what, msg);
  return InternalError("{}: {} (CUresult {})", what, msg, static_cast<int>(r));
}

StatusOr<VmmDevice> OpenVmmDevice(int ordinal) {
  TANDEM_ASSIGN_OR_RETURN(const DriverVmm* d, Driver());
  TANDEM_CUDA_STATUS(cudaSetDevice(ordinal));
  TANDEM_CUDA_STATUS(cudaFree(nullptr));  // creates the primary context the driver calls use
  VmmDevice dev;
  dev.driver = d;
  dev.ordinal = ordinal;
  TANDEM_RETURN_IF_ERROR(CuStatus(*d, d->device_get(&dev.device, ordinal), "cuDeviceGet"));
  int vmm = 0, posix_fd = 0;
  TANDEM_RETURN_IF_ERROR(
      CuStatus(*d,
               d->device_get_attribute(
                   &vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev.device),
               "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)"));
  if (vmm == 0) {
    return UnavailableError(
        "CUDA device {} does not support the virtual memory management API (cuMemCreate), "
        "which exportable KV pages need",
        ordinal);
  }
  TANDEM_RETURN_IF_ERROR(CuStatus(
      *d,
      d->device_get_attribute(
          &posix_fd, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev.device),
      "cuDeviceGetAttribute(HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)"));
  if (posix_fd == 0) {
    return UnavailableError(
        "CUDA device {} cannot export allocations as POSIX file descriptors, which exportable "
        "KV pages need",
        ordinal);
  }
  dev.prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  dev.prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  dev.prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  dev.prop.location.id = ordinal;
  TANDEM_RETURN_IF_ERROR(
      CuStatus(*d,
               d->mem_get_allocation_granularity(&dev.granularity, &dev.prop,
                                                 CU_MEM_ALLOC_GRANULARITY_MINIMUM),
               "cuMemGetAllocationGranularity"));
  if (dev.granularity == 0) return InternalError("cuMemGetAllocationGranularity gave 0");
  return dev;
}

StatusOr<std::unique_ptr<VmmMapping>> VmmMapping::Map(const VmmDevice& dev,
                                                      CUmemGenericAllocationHandle handle,
                                                      size_t bytes) {
  const DriverVmm& d = *dev.driver;
  // From here the mapping owns the handle: its destructor undoes whatever was done.
  auto m = std::unique_ptr<VmmMapping>(new VmmMapping(&d, handle, bytes));
  CUdeviceptr ptr = 0;
  TANDEM_RETURN_IF_ERROR(CuStatus(d, d.mem_address_reserve(&ptr, bytes, dev.granularity, 0, 0),
                                  "cuMemAddressReserve"));
  m->ptr_ = ptr;
  const CUresult r = d.mem_map(ptr, bytes, 0, handle, 0);
  if (r == CUDA_ERROR_INVALID_VALUE) {
    return InvalidArgumentError("cannot map {} bytes of the device allocation: it is smaller ({})",
                                bytes, CuStatus(d, r, "cuMemMap").message());
  }
  TANDEM_RETURN_IF_ERROR(CuStatus(d, r, "cuMemMap"));
  m->mapped_ = true;
  CUmemAccessDesc access{};
  access.location = dev.prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  TANDEM_RETURN_IF_ERROR(CuStatus(d, d.mem_set_access(ptr, bytes, &access, 1), "cuMemSetAccess"));
  return m;
}

VmmMapping::~VmmMapping() {
  if (mapped_) (void)driver_->mem_unmap(ptr_, bytes_);
  if (ptr_ != 0) (void)driver_->mem_address_free(ptr_, bytes_);
  (void)driver_->mem_release(handle_);
}

StatusOr<ExportedAllocation> CreateExportedAllocation(const VmmDevice& dev, size_t bytes) {
  const DriverVmm& d = *dev.driver;
  const size_t size = dev.RoundUp(bytes);
  CUmemGenericAllocationHandle handle{};
  TANDEM_RETURN_IF_ERROR(CuStatus(d, d.mem_create(&handle, size, &dev.prop, 0), "cuMemCreate"));
  ExportedAllocation out;
  TANDEM_ASSIGN_OR_RETURN(out.mapping, VmmMapping::Map(dev, handle, size));
  int fd = -1;
  TANDEM_RETURN_IF_ERROR(CuStatus(
      d, d.mem_export_to_shareable_handle(&fd, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
      "cuMemExportToShareableHandle"));
  out.fd = fd;
  return out;
}

}  // namespace tandem::cuda_backend
