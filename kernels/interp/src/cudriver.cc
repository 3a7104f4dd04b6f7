// The fake CUDA driver: the virtual memory management (VMM) entry points the engine takes
// through cudaGetDriverEntryPointByVersion (engine/src/cuda/vmm.cc), backed by real shared
// memory so that two processes running the interpreter really share an exported allocation:
//  - an allocation (cuMemCreate) is a memfd of its size; its handle an id in a table;
//  - cuMemAddressReserve reserves address space (mmap PROT_NONE, aligned);
//  - cuMemMap maps the memfd MAP_SHARED|MAP_FIXED into a reserved range; cuMemSetAccess
//    (read-write) registers the range as device memory, so copies, memsets and kernels accept
//    pointers into it; cuMemUnmap unregisters it and puts PROT_NONE back;
//  - cuMemExportToShareableHandle gives a dup of the memfd (POSIX_FILE_DESCRIPTOR only);
//    cuMemImportFromShareableHandle accepts only such a memfd and makes a new handle of it.
// Granularity is 2 MiB, as on a GPU; sizes, offsets and addresses are checked like the driver
// does (CUDA_ERROR_INVALID_VALUE). TANDEM_INTERP_NO_VMM_FD=1 makes the device report no POSIX
// file descriptor handle support (tests of the UNAVAILABLE path).
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <string_view>

#include "cudart_state.h"
#include "internal.h"

namespace tandem::interp {
namespace {

using rt::Lock;
using rt::S;

constexpr size_t kGranularity = size_t{2} << 20;
constexpr std::string_view kMemfdName = "tandem-interp-vmm";
using internal::kPoisonLimit;

struct Allocation {
  int fd = -1;
  size_t size = 0;
  bool exportable = false;  // requested POSIX_FILE_DESCRIPTOR handles
  bool created = false;     // by cuMemCreate here (accounted in device_used), not imported
};

struct Mapping {
  size_t size = 0;
  bool accessible = false;  // registered in S().device by cuMemSetAccess
};

struct Driver {
  uint64_t next_handle = 1;
  std::map<uint64_t, Allocation> allocations;
  std::map<uintptr_t, size_t> reserved;  // base -> size
  std::map<uintptr_t, Mapping> mapped;   // base -> mapping
};

// Guarded by internal::ExecMutex(), like the runtime's state.
Driver& D() {
  static auto* d = new Driver();
  return *d;
}

// The reservation that contains [p, p + n), or end().
std::map<uintptr_t, size_t>::iterator Reservation(uintptr_t p, size_t n) {
  auto& r = D().reserved;
  auto it = r.upper_bound(p);
  if (it == r.begin()) return r.end();
  --it;
  return p >= it->first && p + n <= it->first + it->second ? it : r.end();
}

bool Overlaps(uintptr_t p, size_t n) {
  for (const auto& [base, m] : D().mapped) {
    if (p < base + m.size && base < p + n) return true;
  }
  return false;
}

// A memfd made by cuMemCreate (here or in another process running the interpreter).
bool IsOurMemfd(int fd) {
  char link[256];
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  const ssize_t n = readlink(path.c_str(), link, sizeof(link) - 1);
  if (n <= 0) return false;
  const std::string_view target(link, static_cast<size_t>(n));
  return target.substr(0, 7 + kMemfdName.size()) ==
         std::string("/memfd:") + std::string(kMemfdName);
}

bool DeviceOk(const CUmemLocation& loc) {
  return loc.type == CU_MEM_LOCATION_TYPE_DEVICE && loc.id == 0;
}

}  // namespace
}  // namespace tandem::interp

using namespace tandem::interp;  // NOLINT: this file implements the C API
using tandem::interp::internal::ExecMutex;

namespace {

CUresult CUDAAPI FakeGetErrorString(CUresult error, const char** str) {
  if (str == nullptr) return CUDA_ERROR_INVALID_VALUE;
  switch (error) {
    case CUDA_SUCCESS:
      *str = "no error";
      return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_VALUE:
      *str = "invalid argument";
      return CUDA_SUCCESS;
    case CUDA_ERROR_OUT_OF_MEMORY:
      *str = "out of memory";
      return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_DEVICE:
      *str = "invalid device ordinal";
      return CUDA_SUCCESS;
    case CUDA_ERROR_INVALID_HANDLE:
      *str = "invalid resource handle";
      return CUDA_SUCCESS;
    case CUDA_ERROR_NOT_SUPPORTED:
      *str = "operation not supported";
      return CUDA_SUCCESS;
    case CUDA_ERROR_OPERATING_SYSTEM:
      *str = "OS call failed or operation not supported on this OS";
      return CUDA_SUCCESS;
    default:
      *str = nullptr;
      return CUDA_ERROR_INVALID_VALUE;
  }
}

CUresult CUDAAPI FakeDeviceGet(CUdevice* device, int ordinal) {
  if (device == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
  *device = 0;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeDeviceGetAttribute(int* value, CUdevice_attribute attr, CUdevice device) {
  if (value == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (device != 0) return CUDA_ERROR_INVALID_DEVICE;
  switch (attr) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
      *value = 1;
      return CUDA_SUCCESS;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED: {
      const char* off = std::getenv("TANDEM_INTERP_NO_VMM_FD");
      *value = (off != nullptr && *off != 0 && *off != '0') ? 0 : 1;
      return CUDA_SUCCESS;
    }
    default:
      return CUDA_ERROR_NOT_SUPPORTED;  // not modelled: the runtime's cudaDeviceGetAttribute is
  }
}

CUresult CUDAAPI FakeMemGetAllocationGranularity(size_t* granularity,
                                                 const CUmemAllocationProp* prop,
                                                 CUmemAllocationGranularity_flags option) {
  if (granularity == nullptr || prop == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED || !DeviceOk(prop->location)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
      option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  *granularity = kGranularity;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemCreate(CUmemGenericAllocationHandle* handle, size_t size,
                               const CUmemAllocationProp* prop, unsigned long long flags) {
  if (handle == nullptr || prop == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (size == 0 || size % kGranularity != 0) return CUDA_ERROR_INVALID_VALUE;
  if (prop->type != CU_MEM_ALLOCATION_TYPE_PINNED || !DeviceOk(prop->location)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if ((prop->requestedHandleTypes & ~CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0) {
    return CUDA_ERROR_NOT_SUPPORTED;  // no fabric or Win32 handles here
  }
  Lock lock(ExecMutex());
  if (size > S().device_total - S().device_used) return CUDA_ERROR_OUT_OF_MEMORY;
  const int fd = memfd_create(std::string(kMemfdName).c_str(), MFD_CLOEXEC);
  if (fd < 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
    close(fd);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  // Fresh device memory is garbage on a GPU: poison it so reads before writes show.
  if (size <= kPoisonLimit) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      return CUDA_ERROR_OUT_OF_MEMORY;
    }
    std::memset(p, 0xCD, size);
    munmap(p, size);
  }
  Allocation a;
  a.fd = fd;
  a.size = size;
  a.exportable = (prop->requestedHandleTypes & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) != 0;
  a.created = true;
  S().device_used += size;
  *handle = D().next_handle++;
  D().allocations[*handle] = a;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemRelease(CUmemGenericAllocationHandle handle) {
  Lock lock(ExecMutex());
  auto it = D().allocations.find(handle);
  if (it == D().allocations.end()) return CUDA_ERROR_INVALID_VALUE;
  // Mappings keep the memory (as on a GPU): the memfd's pages live while mapped.
  close(it->second.fd);
  if (it->second.created) S().device_used -= it->second.size;
  D().allocations.erase(it);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemAddressReserve(CUdeviceptr* ptr, size_t size, size_t alignment,
                                       CUdeviceptr addr, unsigned long long flags) {
  if (ptr == nullptr || flags != 0 || size == 0 || size % kGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  if (alignment == 0) alignment = kGranularity;
  if (alignment % kGranularity != 0 || (alignment & (alignment - 1)) != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  (void)addr;  // a hint only
  // Over-reserve, then trim to an aligned range.
  const size_t span = size + alignment;
  void* raw = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t base = (start + alignment - 1) / alignment * alignment;
  if (base > start) munmap(raw, base - start);
  if (start + span > base + size) {
    munmap(reinterpret_cast<void*>(base + size), start + span - (base + size));
  }
  Lock lock(ExecMutex());
  D().reserved[base] = size;
  *ptr = static_cast<CUdeviceptr>(base);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemAddressFree(CUdeviceptr ptr, size_t size) {
  Lock lock(ExecMutex());
  auto it = D().reserved.find(static_cast<uintptr_t>(ptr));
  if (it == D().reserved.end() || it->second != size) return CUDA_ERROR_INVALID_VALUE;
  if (Overlaps(it->first, size)) return CUDA_ERROR_INVALID_VALUE;  // still mapped
  munmap(reinterpret_cast<void*>(it->first), size);
  D().reserved.erase(it);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                            CUmemGenericAllocationHandle handle, unsigned long long flags) {
  if (flags != 0 || size == 0 || size % kGranularity != 0 || offset % kGranularity != 0) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  Lock lock(ExecMutex());
  auto a = D().allocations.find(handle);
  if (a == D().allocations.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (offset > a->second.size || size > a->second.size - offset) return CUDA_ERROR_INVALID_VALUE;
  const auto p = static_cast<uintptr_t>(ptr);
  if (p % kGranularity != 0 || Reservation(p, size) == D().reserved.end() || Overlaps(p, size)) {
    return CUDA_ERROR_INVALID_VALUE;
  }
  void* m = mmap(reinterpret_cast<void*>(p), size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                 a->second.fd, static_cast<off_t>(offset));
  if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
  D().mapped[p] = Mapping{size, false};
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemUnmap(CUdeviceptr ptr, size_t size) {
  Lock lock(ExecMutex());
  const auto p = static_cast<uintptr_t>(ptr);
  auto it = D().mapped.find(p);
  if (it == D().mapped.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  if (it->second.accessible) {
    S().device.erase(p);
    S().vmm.erase(p);
  }
  D().mapped.erase(it);
  // Back to reserved address space.
  mmap(reinterpret_cast<void*>(p), size, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc* desc,
                                  size_t count) {
  if (desc == nullptr || count == 0) return CUDA_ERROR_INVALID_VALUE;
  Lock lock(ExecMutex());
  const auto p = static_cast<uintptr_t>(ptr);
  auto it = D().mapped.find(p);
  // One whole mapping at a time (the driver allows ranges of several; we need no more).
  if (it == D().mapped.end() || it->second.size != size) return CUDA_ERROR_INVALID_VALUE;
  for (size_t i = 0; i < count; ++i) {
    if (!DeviceOk(desc[i].location)) return CUDA_ERROR_INVALID_DEVICE;
    if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE &&
        desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE) {
      return CUDA_ERROR_NOT_SUPPORTED;  // read-only device access is not modelled
    }
    const bool rw = desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    if (rw && !it->second.accessible) {
      S().device[p] = size;
      S().vmm.insert(p);
    } else if (!rw && it->second.accessible) {
      S().device.erase(p);
      S().vmm.erase(p);
    }
    it->second.accessible = rw;
  }
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemExportToShareableHandle(void* shareable,
                                                CUmemGenericAllocationHandle handle,
                                                CUmemAllocationHandleType type,
                                                unsigned long long flags) {
  if (shareable == nullptr || flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
  Lock lock(ExecMutex());
  auto a = D().allocations.find(handle);
  if (a == D().allocations.end()) return CUDA_ERROR_INVALID_HANDLE;
  if (!a->second.exportable) return CUDA_ERROR_INVALID_VALUE;
  const int fd = fcntl(a->second.fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return CUDA_ERROR_OPERATING_SYSTEM;
  *static_cast<int*>(shareable) = fd;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI FakeMemImportFromShareableHandle(CUmemGenericAllocationHandle* handle,
                                                  void* os_handle, CUmemAllocationHandleType type) {
  if (handle == nullptr) return CUDA_ERROR_INVALID_VALUE;
  if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_NOT_SUPPORTED;
  const int fd = static_cast<int>(reinterpret_cast<uintptr_t>(os_handle));
  struct stat st {};
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !IsOurMemfd(fd)) {
    return CUDA_ERROR_INVALID_VALUE;  // not an exported allocation
  }
  const int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (own < 0) return CUDA_ERROR_OPERATING_SYSTEM;
  Lock lock(ExecMutex());
  Allocation a;
  a.fd = own;
  a.size = static_cast<size_t>(st.st_size);
  a.exportable = true;
  *handle = D().next_handle++;
  D().allocations[*handle] = a;
  return CUDA_SUCCESS;
}

struct Entry {
  const char* name;
  void* fn;
};

const Entry kEntries[] = {
    {"cuGetErrorString", reinterpret_cast<void*>(&FakeGetErrorString)},
    {"cuDeviceGet", reinterpret_cast<void*>(&FakeDeviceGet)},
    {"cuDeviceGetAttribute", reinterpret_cast<void*>(&FakeDeviceGetAttribute)},
    {"cuMemGetAllocationGranularity", reinterpret_cast<void*>(&FakeMemGetAllocationGranularity)},
    {"cuMemCreate", reinterpret_cast<void*>(&FakeMemCreate)},
    {"cuMemRelease", reinterpret_cast<void*>(&FakeMemRelease)},
    {"cuMemAddressReserve", reinterpret_cast<void*>(&FakeMemAddressReserve)},
    {"cuMemAddressFree", reinterpret_cast<void*>(&FakeMemAddressFree)},
    {"cuMemMap", reinterpret_cast<void*>(&FakeMemMap)},
    {"cuMemUnmap", reinterpret_cast<void*>(&FakeMemUnmap)},
    {"cuMemSetAccess", reinterpret_cast<void*>(&FakeMemSetAccess)},
    {"cuMemExportToShareableHandle", reinterpret_cast<void*>(&FakeMemExportToShareableHandle)},
    {"cuMemImportFromShareableHandle", reinterpret_cast<void*>(&FakeMemImportFromShareableHandle)},
};

}  // namespace

extern "C" {

// As the real runtime: cudaSuccess with a null pointer and cudaDriverEntryPointSymbolNotFound
// for a symbol this driver lacks; cudaErrorInvalidValue for bad arguments.
cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** func_ptr,
                                             unsigned int cuda_version, unsigned long long flags,
                                             cudaDriverEntryPointQueryResult* status) {
  (void)flags;
  if (symbol == nullptr || func_ptr == nullptr) {
    return internal::SetLastError(cudaErrorInvalidValue);
  }
  if (cuda_version > CUDART_VERSION) return internal::SetLastError(cudaErrorInvalidValue);
  *func_ptr = nullptr;
  for (const Entry& e : kEntries) {
    if (std::strcmp(e.name, symbol) != 0) continue;
    if (cuda_version < 10020 && std::strncmp(symbol, "cuMem", 5) == 0) {
      if (status != nullptr) *status = cudaDriverEntryPointVersionNotSufficent;
      return cudaSuccess;
    }
    *func_ptr = e.fn;
    if (status != nullptr) *status = cudaDriverEntryPointSuccess;
    return cudaSuccess;
  }
  if (status != nullptr) *status = cudaDriverEntryPointSymbolNotFound;
  return cudaSuccess;
}

cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** func_ptr, unsigned long long flags,
                                    cudaDriverEntryPointQueryResult* status) {
  return cudaGetDriverEntryPointByVersion(symbol, func_ptr, CUDART_VERSION, flags, status);
}

}  // extern "C"
