// Private to the interpreter runtime: the fake CUDA runtime's handle types and shared state,
// used by cudart.cc (errors, device, memory) and cudart_streams.cc (streams, events, stream
// capture and graphs).
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <vector>

// Opaque handle types of the runtime API (incomplete in the headers).
struct CUgraph_st;
struct CUstream_st {
  unsigned flags = cudaStreamDefault;
  int priority = 0;
  CUgraph_st* capture = nullptr;  // graph being captured into, or null
};
struct CUevent_st {
  unsigned flags = cudaEventDefault;
  bool recorded = false;
  std::chrono::steady_clock::time_point time;
  CUgraph_st* captured_in = nullptr;  // recorded during this (ongoing) capture
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
  bool capturing = false;
  bool invalidated = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeGlobal;
  std::thread::id thread;
  CUstream_st* origin = nullptr;
  std::vector<CUstream_st*> streams;  // origin and joined streams
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};

namespace tandem::interp::rt {

struct State {
  CUstream_st legacy;
  std::set<CUstream_st*> streams;
  std::set<CUevent_st*> events;
  std::set<CUgraph_st*> graphs;
  std::set<CUgraphExec_st*> execs;
  std::map<uintptr_t, size_t> device;  // base -> bytes asked for (copies are checked against it)
  std::map<uintptr_t, size_t> host;    // pinned host allocations
  // Bases in `device` that are cuMemMap'd ranges (cudriver.cc), not cudaMalloc'd.
  std::set<uintptr_t> vmm;
  size_t device_used = 0;
  size_t device_total = 0;
  std::unordered_map<const void*, size_t> max_dynamic_smem;
};

// The one runtime state (guarded by internal::ExecMutex()).
State& S();
using Lock = std::lock_guard<std::recursive_mutex>;
// This thread's stream capture mode (cudaThreadExchangeStreamCaptureMode).
cudaStreamCaptureMode& CaptureMode();

bool IsLegacy(cudaStream_t s);
// Resolves a handle; null if it is not a live stream.
CUstream_st* Resolve(cudaStream_t s);
inline void Invalidate(CUgraph_st* g) { g->invalidated = true; }
// CUDA forbids "potentially unsafe" calls (cudaMalloc, synchronous copies, device syncs...)
// while a capture is under way: by this thread unless relaxed, by any thread in global mode.
cudaError_t CheckUnsafeCall();
// Work on the legacy stream synchronizes with every blocking stream: illegal while one of
// them captures.
cudaError_t CheckLegacyUse();

}  // namespace tandem::interp::rt
