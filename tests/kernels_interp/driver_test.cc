// The fake CUDA driver's VMM calls (kernels/interp/src/cudriver.cc), taken as the engine takes
// them: through cudaGetDriverEntryPointByVersion. Memfd-backed allocations, address
// reservations, mappings registered as device memory only while mapped with read-write access,
// export/import of POSIX file descriptors, and the driver's argument checks.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <vector>

namespace tandem::interp::testing {
namespace {

template <typename Fn>
Fn Entry(const char* name) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
  EXPECT_EQ(cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &q), cudaSuccess);
  EXPECT_EQ(q, cudaDriverEntryPointSuccess) << name;
  return reinterpret_cast<Fn>(fn);
}

constexpr size_t kGran = size_t{2} << 20;

struct Vmm {
  PFN_cuMemCreate_v10020 create = Entry<PFN_cuMemCreate_v10020>("cuMemCreate");
  PFN_cuMemRelease_v10020 release = Entry<PFN_cuMemRelease_v10020>("cuMemRelease");
  PFN_cuMemAddressReserve_v10020 reserve =
      Entry<PFN_cuMemAddressReserve_v10020>("cuMemAddressReserve");
  PFN_cuMemAddressFree_v10020 free = Entry<PFN_cuMemAddressFree_v10020>("cuMemAddressFree");
  PFN_cuMemMap_v10020 map = Entry<PFN_cuMemMap_v10020>("cuMemMap");
  PFN_cuMemUnmap_v10020 unmap = Entry<PFN_cuMemUnmap_v10020>("cuMemUnmap");
  PFN_cuMemSetAccess_v10020 access = Entry<PFN_cuMemSetAccess_v10020>("cuMemSetAccess");
  PFN_cuMemExportToShareableHandle_v10020 export_handle =
      Entry<PFN_cuMemExportToShareableHandle_v10020>("cuMemExportToShareableHandle");
  PFN_cuMemImportFromShareableHandle_v10020 import_handle =
      Entry<PFN_cuMemImportFromShareableHandle_v10020>("cuMemImportFromShareableHandle");

  CUmemAllocationProp Prop() const {
    CUmemAllocationProp p{};
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    p.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    p.location.id = 0;
    return p;
  }
  CUmemAccessDesc ReadWrite() const {
    CUmemAccessDesc d{};
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = 0;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    return d;
  }
};

TEST(InterpDriver, EntryPointsAndAttributes) {
  void* fn = reinterpret_cast<void*>(1);
  cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSuccess;
  EXPECT_EQ(cudaGetDriverEntryPointByVersion("cuLaunchKernel", &fn, 12000, cudaEnableDefault, &q),
            cudaSuccess);
  EXPECT_EQ(fn, nullptr);
  EXPECT_EQ(q, cudaDriverEntryPointSymbolNotFound);
  EXPECT_EQ(cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 10000, cudaEnableDefault, &q),
            cudaSuccess);
  EXPECT_EQ(fn, nullptr);
  EXPECT_EQ(q, cudaDriverEntryPointVersionNotSufficent);
  EXPECT_EQ(cudaGetDriverEntryPointByVersion(nullptr, &fn, 12000, cudaEnableDefault, &q),
            cudaErrorInvalidValue);
  (void)cudaGetLastError();

  auto get = Entry<PFN_cuDeviceGet_v2000>("cuDeviceGet");
  auto attr = Entry<PFN_cuDeviceGetAttribute_v2000>("cuDeviceGetAttribute");
  auto gran = Entry<PFN_cuMemGetAllocationGranularity_v10020>("cuMemGetAllocationGranularity");
  auto err = Entry<PFN_cuGetErrorString_v6000>("cuGetErrorString");
  CUdevice dev = -1;
  ASSERT_EQ(get(&dev, 0), CUDA_SUCCESS);
  EXPECT_EQ(get(&dev, 1), CUDA_ERROR_INVALID_DEVICE);
  int v = 0;
  ASSERT_EQ(attr(&v, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev), CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  ASSERT_EQ(attr(&v, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, dev),
            CUDA_SUCCESS);
  EXPECT_EQ(v, 1);
  size_t g = 0;
  const CUmemAllocationProp prop = Vmm().Prop();
  ASSERT_EQ(gran(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
  EXPECT_EQ(g, kGran);
  const char* s = nullptr;
  ASSERT_EQ(err(CUDA_ERROR_INVALID_VALUE, &s), CUDA_SUCCESS);
  EXPECT_STREQ(s, "invalid argument");
}

TEST(InterpDriver, MappedRangesAreDeviceMemoryOnlyWhileMappedReadWrite) {
  Vmm d;
  const CUmemAllocationProp prop = d.Prop();
  CUmemGenericAllocationHandle h{};
  EXPECT_EQ(d.create(&h, kGran + 1, &prop, 0), CUDA_ERROR_INVALID_VALUE);  // not a multiple
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  ASSERT_EQ(d.create(&h, 2 * kGran, &prop, 0), CUDA_SUCCESS);
  size_t free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(free0 - free1, 2 * kGran);

  CUdeviceptr ptr = 0;
  ASSERT_EQ(d.reserve(&ptr, 2 * kGran, 0, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(ptr % kGran, 0u);
  EXPECT_EQ(d.map(ptr, 4 * kGran, 0, h, 0), CUDA_ERROR_INVALID_VALUE);  // past the allocation
  ASSERT_EQ(d.map(ptr, 2 * kGran, 0, h, 0), CUDA_SUCCESS);
  auto* p = reinterpret_cast<unsigned char*>(static_cast<uintptr_t>(ptr));
  std::vector<unsigned char> buf(64, 7);
  // Mapped without access: not device memory yet.
  EXPECT_EQ(cudaMemcpy(p, buf.data(), buf.size(), cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  const CUmemAccessDesc rw = d.ReadWrite();
  ASSERT_EQ(d.access(ptr, 2 * kGran, &rw, 1), CUDA_SUCCESS);
  ASSERT_EQ(cudaMemcpy(p + kGran, buf.data(), buf.size(), cudaMemcpyHostToDevice), cudaSuccess);
  std::vector<unsigned char> back(64, 0);
  ASSERT_EQ(cudaMemcpy(back.data(), p + kGran, back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, buf);
  ASSERT_EQ(cudaMemcpy(back.data(), p, 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back[0], 0xCD);  // fresh memory is poisoned
  EXPECT_EQ(cudaMemcpy(back.data(), p + 2 * kGran - 2, 4, cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);  // past the mapping
  (void)cudaGetLastError();
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // not cudaMalloc'd
  (void)cudaGetLastError();

  // Export, import, map again elsewhere: the same bytes.
  int fd = -1;
  ASSERT_EQ(d.export_handle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0), CUDA_SUCCESS);
  ASSERT_GE(fd, 0);
  CUmemGenericAllocationHandle h2{};
  ASSERT_EQ(d.import_handle(&h2, reinterpret_cast<void*>(static_cast<uintptr_t>(fd)),
                            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            CUDA_SUCCESS);
  close(fd);
  CUdeviceptr ptr2 = 0;
  ASSERT_EQ(d.reserve(&ptr2, 2 * kGran, 4 * kGran, 0, 0), CUDA_SUCCESS);
  EXPECT_EQ(ptr2 % (4 * kGran), 0u);
  ASSERT_EQ(d.map(ptr2, 2 * kGran, 0, h2, 0), CUDA_SUCCESS);
  ASSERT_EQ(d.access(ptr2, 2 * kGran, &rw, 1), CUDA_SUCCESS);
  auto* p2 = reinterpret_cast<unsigned char*>(static_cast<uintptr_t>(ptr2));
  ASSERT_EQ(cudaMemcpy(back.data(), p2 + kGran, back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, buf);

  // A pipe is not an exported allocation.
  int pp[2];
  ASSERT_EQ(pipe(pp), 0);
  CUmemGenericAllocationHandle h3{};
  EXPECT_EQ(d.import_handle(&h3, reinterpret_cast<void*>(static_cast<uintptr_t>(pp[0])),
                            CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
            CUDA_ERROR_INVALID_VALUE);
  close(pp[0]);
  close(pp[1]);

  // Teardown: a mapped range cannot be freed; unmapped, it is no longer device memory.
  EXPECT_EQ(d.free(ptr, 2 * kGran), CUDA_ERROR_INVALID_VALUE);
  ASSERT_EQ(d.unmap(ptr, 2 * kGran), CUDA_SUCCESS);
  EXPECT_EQ(cudaMemcpy(back.data(), p + kGran, 4, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  (void)cudaGetLastError();
  ASSERT_EQ(d.free(ptr, 2 * kGran), CUDA_SUCCESS);
  ASSERT_EQ(d.release(h), CUDA_SUCCESS);
  EXPECT_EQ(d.release(h), CUDA_ERROR_INVALID_VALUE);
  // The import still maps the memory after the creator's handle is gone.
  ASSERT_EQ(cudaMemcpy(back.data(), p2 + kGran, back.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, buf);
  ASSERT_EQ(d.unmap(ptr2, 2 * kGran), CUDA_SUCCESS);
  ASSERT_EQ(d.free(ptr2, 2 * kGran), CUDA_SUCCESS);
  ASSERT_EQ(d.release(h2), CUDA_SUCCESS);
  size_t free2 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free2, &total), cudaSuccess);
  EXPECT_EQ(free2, free0);
}

}  // namespace
}  // namespace tandem::interp::testing
