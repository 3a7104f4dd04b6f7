// The fake CUDA runtime: device queries, memory accounting, copies and their checks, streams,
// events, host functions, stream capture and graph replay, and the capture rules it enforces.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tandem/kernels/interp/cub_shim.h"
#include "tandem/kernels/interp/runtime.h"

namespace tandem::interp::testing {
namespace {

TEST(InterpRuntime, DeviceQueries) {
  int count = 0, device = -1, sms = 0, smem_optin = 0, warp = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  EXPECT_EQ(count, 1);
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(device, 0);
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  cudaDeviceProp prop;
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, "Tandem CUDA interpreter");
  EXPECT_EQ(prop.multiProcessorCount, 132);
  EXPECT_EQ(prop.warpSize, 32);
  EXPECT_EQ(prop.sharedMemPerMultiprocessor, size_t{228} << 10);
  ASSERT_EQ(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0),
            cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&warp, cudaDevAttrWarpSize, 0), cudaSuccess);
  EXPECT_EQ(sms, 132);
  EXPECT_EQ(smem_optin, 227 << 10);
  EXPECT_EQ(warp, 32);
  EXPECT_STREQ(cudaGetErrorName(cudaErrorInvalidValue), "cudaErrorInvalidValue");
  EXPECT_STREQ(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
}

TEST(InterpRuntime, MemGetInfoTracksAllocations) {
  size_t free0 = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free0, &total), cudaSuccess);
  EXPECT_EQ(total, size_t{4096} << 20);  // TANDEM_INTERP_DEVICE_MB default
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1000), cudaSuccess);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  size_t free1 = 0;
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(free0 - free1, 1024u);  // rounded to 256 bytes
  void* huge = nullptr;
  EXPECT_EQ(cudaMalloc(&huge, total), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  ASSERT_EQ(cudaMemGetInfo(&free1, &total), cudaSuccess);
  EXPECT_EQ(free1, free0);
  int on_stack = 0;
  EXPECT_EQ(cudaFree(&on_stack), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // double free
  (void)cudaGetLastError();
}

TEST(InterpRuntime, CopiesMemsetAndDirectionChecks) {
  std::vector<int> host = {1, 2, 3, 4, 5, 6, 7, 8}, back(8, 0);
  int *a = nullptr, *b = nullptr;
  ASSERT_EQ(cudaMalloc(&a, 32), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&b, 32), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(a, host.data(), 32, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(b, a, 32, cudaMemcpyDeviceToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemset(b, 0, 8), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(back.data(), b, 32, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back, (std::vector<int>{0, 0, 3, 4, 5, 6, 7, 8}));
  // Host pointer where a device pointer is promised, and an overrun of the allocation.
  EXPECT_EQ(cudaMemcpy(back.data(), host.data(), 32, cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  std::vector<int> big(16);
  EXPECT_EQ(cudaMemcpy(big.data(), a, 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemset(host.data(), 0, 4), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(a, b, 4, static_cast<cudaMemcpyKind>(9)), cudaErrorInvalidMemcpyDirection);
  (void)cudaGetLastError();
  void* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 32), cudaSuccess);
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(a, 0xff, 32, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(pinned, a, 32, cudaMemcpyDeviceToHost, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(static_cast<int*>(pinned)[7], -1);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  cudaFree(a);
  cudaFree(b);
}

TEST(InterpRuntime, EventsAndHostFunctions) {
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  cudaEvent_t start, stop, untimed;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  float ms = -1.0f;
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorInvalidResourceHandle);  // unrecorded
  std::vector<int> order;
  ASSERT_EQ(cudaEventRecord(start, s), cudaSuccess);
  ASSERT_EQ(cudaLaunchHostFunc(
                s, [](void* p) { static_cast<std::vector<int>*>(p)->push_back(1); }, &order),
            cudaSuccess);
  ASSERT_EQ(cudaEventRecord(stop, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(untimed, s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(nullptr, stop, 0), cudaSuccess);
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(stop), cudaSuccess);
  EXPECT_EQ(cudaStreamQuery(s), cudaSuccess);
  ASSERT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(order, std::vector<int>{1});
  (void)cudaGetLastError();
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaEventDestroy(untimed);
  EXPECT_EQ(cudaEventDestroy(start), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  cudaStreamDestroy(s);
}

TEST(InterpRuntime, CaptureRecordsAndGraphReplays) {
  cudaStream_t s, side;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
  int *in = nullptr, *out = nullptr;
  ASSERT_EQ(cudaMalloc(&in, 16), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&out, 16), cudaSuccess);
  ASSERT_EQ(cudaMemset(out, 0, 16), cudaSuccess);
  int host[4] = {1, 2, 3, 4}, back[4] = {0, 0, 0, 0};

  cudaEvent_t fork, join;
  ASSERT_EQ(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&join, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaStreamCaptureStatus status;
  ASSERT_EQ(cudaStreamIsCapturing(s, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  unsigned long long id = 0;
  cudaGraph_t building = nullptr;
  ASSERT_EQ(cudaStreamGetCaptureInfo(s, &status, &id, &building), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  EXPECT_NE(id, 0u);
  ASSERT_EQ(cudaMemcpyAsync(in, host, 16, cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(fork, s), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(side, fork, 0), cudaSuccess);  // side joins the capture
  ASSERT_EQ(cudaStreamIsCapturing(side, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  ASSERT_EQ(cudaMemcpyAsync(out, in, 8, cudaMemcpyDeviceToDevice, side), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(join, side), cudaSuccess);
  ASSERT_EQ(cudaStreamWaitEvent(s, join, 0), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(back, out, 16, cudaMemcpyDeviceToHost, s), cudaSuccess);
  cudaGraph_t graph;
  ASSERT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  ASSERT_EQ(cudaStreamIsCapturing(side, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusNone);
  EXPECT_EQ(back[0], 0);  // nothing ran during capture

  cudaGraphExec_t exec;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  EXPECT_EQ(graph, building);
  ASSERT_EQ(cudaGraphUpload(exec, s), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ(std::vector<int>(back, back + 4), (std::vector<int>{1, 2, 0, 0}));
  host[0] = 10;  // the graph copies from the same address again
  ASSERT_EQ(cudaGraphLaunch(exec, s), cudaSuccess);
  EXPECT_EQ(back[0], 10);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaGraphLaunch(exec, s), cudaErrorInvalidResourceHandle);
  (void)cudaGetLastError();
  cudaEventDestroy(fork);
  cudaEventDestroy(join);
  cudaFree(in);
  cudaFree(out);
  cudaStreamDestroy(s);
  cudaStreamDestroy(side);
}

TEST(InterpRuntime, CaptureRulesAreEnforced) {
  cudaStream_t s, blocking;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  void* p = nullptr;

  // cudaMalloc during a global-mode capture invalidates it.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);

  // ... but is allowed in relaxed mode.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  cudaFree(p);

  // Synchronizing a capturing stream is an error.
  ASSERT_EQ(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(s), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureInvalidated);

  // The legacy stream may not touch a capturing blocking stream.
  ASSERT_EQ(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeGlobal), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(nullptr, 0, 0, nullptr), cudaSuccess);  // empty: nothing enqueued
  EXPECT_EQ(cudaLaunchHostFunc(
                nullptr, [](void*) {}, nullptr),
            cudaErrorStreamCaptureImplicit);
  EXPECT_EQ(cudaStreamEndCapture(blocking, &graph), cudaErrorStreamCaptureInvalidated);

  // Capture cannot start on the legacy stream; EndCapture needs the origin stream.
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeGlobal),
            cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(s, &graph), cudaErrorStreamCaptureUnmatched);
  (void)cudaGetLastError();
  cudaStreamDestroy(s);
  cudaStreamDestroy(blocking);
}

TEST(InterpRuntime, SegmentedSortShimFollowsCubProtocol) {
  const std::vector<uint64_t> keys = {5, 1, 9, 9, 2, 7, 7, 3, 0, 8};
  const std::vector<int> offsets = {0, 4, 4, 10};  // segments of 4, 0 and 6 keys
  uint64_t *d_in = nullptr, *d_out = nullptr;
  int* d_off = nullptr;
  ASSERT_EQ(cudaMalloc(&d_in, keys.size() * 8), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_out, keys.size() * 8), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&d_off, offsets.size() * 4), cudaSuccess);
  cudaMemcpy(d_in, keys.data(), keys.size() * 8, cudaMemcpyHostToDevice);
  cudaMemcpy(d_off, offsets.data(), offsets.size() * 4, cudaMemcpyHostToDevice);
  size_t temp = 0;
  ASSERT_EQ(cub::DeviceSegmentedRadixSort::SortKeysDescending(nullptr, temp, d_in, d_out, 10, 3,
                                                              d_off, d_off + 1),
            cudaSuccess);
  EXPECT_GT(temp, 0u);
  void* d_temp = nullptr;
  ASSERT_EQ(cudaMalloc(&d_temp, temp), cudaSuccess);
  size_t too_small = temp - 1;
  EXPECT_EQ(cub::DeviceSegmentedRadixSort::SortKeysDescending(d_temp, too_small, d_in, d_out, 10, 3,
                                                              d_off, d_off + 1),
            cudaErrorInvalidValue);
  ASSERT_EQ(cub::DeviceSegmentedRadixSort::SortKeysDescending(d_temp, temp, d_in, d_out, 10, 3,
                                                              d_off, d_off + 1),
            cudaSuccess);
  std::vector<uint64_t> got(10);
  cudaMemcpy(got.data(), d_out, 80, cudaMemcpyDeviceToHost);
  EXPECT_EQ(got, (std::vector<uint64_t>{9, 9, 5, 1, 8, 7, 7, 3, 2, 0}));
  cudaFree(d_in);
  cudaFree(d_out);
  cudaFree(d_off);
  cudaFree(d_temp);
}

}  // namespace
}  // namespace tandem::interp::testing
