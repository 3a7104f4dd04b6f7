// Pieces shared by the interpreter's scheduler (scheduler.cc) and fake CUDA runtime (cudart.cc).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <functional>
#include <mutex>

namespace tandem::interp::internal {

// Held while device work runs (kernels, copies, graph replays): one block at a time.
std::recursive_mutex& ExecMutex();

// Records `e` as the last error (unless it is cudaSuccess) and returns it.
cudaError_t SetLastError(cudaError_t e);

// Largest dynamic shared memory a launch of `func` may ask for: 48 KiB unless raised with
// cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize).
size_t MaxDynamicSmem(const void* func);

// Runs every block of a validated grid (caller holds ExecMutex).
void RunGrid(const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
             const std::function<void()>& body);

// Device limits of the interpreted device (an H100-like part).
constexpr int kSmCount = 132;
constexpr size_t kSmemPerBlockDefault = 48 << 10;
constexpr size_t kSmemPerBlockOptin = 227 << 10;
constexpr size_t kSmemPerSm = 228 << 10;
constexpr int kMaxThreadsPerBlock = 1024;
// Fresh device memory up to this size is filled with 0xCD (garbage on a GPU: reads before writes
// show); larger allocations are left as the host gives them.
constexpr size_t kPoisonLimit = size_t{256} << 20;

}  // namespace tandem::interp::internal
