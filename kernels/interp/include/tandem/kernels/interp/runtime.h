// C++ side of the CUDA interpreter runtime: kernel launch, stream work queue, schedule modes.
// Host code normally talks to the interpreter only through the CUDA runtime API (cudart.cc
// implements it); kernels reach it through TANDEM_LAUNCH / TANDEM_DYNAMIC_SMEM and the device
// built-ins of cuda_interp.h. See kernels/interp/README.md.
//
// Thread safety: every entry point may be called from any host thread; all device work (kernels,
// copies, graph replays) runs under one process-wide lock, one block after another, because
// static __shared__ variables are plain statics shared by all blocks.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

namespace tandem::interp {

// Order in which the fibers (CUDA threads) of a block run between synchronization points.
// A correct kernel gives bit-identical results under every mode; a missing __syncthreads /
// __syncwarp usually does not. Default: TANDEM_INTERP_SCHEDULE=forward|reverse|random[:seed]
// (forward when unset).
enum class Schedule { kForward, kReverse, kRandom };

// Overrides the environment for later launches (tests). `seed` is used by kRandom.
void SetSchedule(Schedule schedule, uint64_t seed = 1);
Schedule CurrentSchedule();

// Runs `work` on `stream` now (stream order == program order, a valid CUDA schedule), or
// appends it to the graph when the stream is capturing. Returns the error the real runtime
// would (invalid handle, capture violations) and records it as the last error.
cudaError_t Enqueue(cudaStream_t stream, std::function<void()> work);

// Validates the launch configuration like the CUDA runtime (error recorded for
// cudaGetLastError, nothing runs) and enqueues the grid. `body` runs the kernel for the
// current thread (threadIdx etc. are set by the scheduler).
void LaunchErased(const char* name, const void* func, dim3 grid, dim3 block, size_t dynamic_smem,
                  cudaStream_t stream, std::function<void()> body);

// The launch used by TANDEM_LAUNCH: the arguments are converted to the kernel's parameter
// types and captured BY VALUE (as a <<<>>> launch copies them), so a launch recorded into a
// graph replays with the values of capture time.
template <typename... KArgs, typename... Args>
void Launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t dynamic_smem,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel argument count");
  std::tuple<std::decay_t<KArgs>...> captured(std::forward<Args>(args)...);
  LaunchErased(name, reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem, stream,
               [kernel, captured]() { std::apply(kernel, captured); });
}

// The current block's dynamic shared memory (poisoned with 0xCD at block start).
void* DynamicSmem();

// Aborts with "kernel K block (x,y,z) thread (x,y,z): message" (device-side error).
[[noreturn]] void KernelError(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// Counters for tests.
struct Stats {
  uint64_t launches = 0;          // grids executed
  uint64_t blocks = 0;            // blocks executed
  uint64_t context_switches = 0;  // fiber switches
};
Stats GetStats();

namespace detail {

// Built-in variables of the running fiber (read through the threadIdx/... macros).
struct BuiltinVars {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern BuiltinVars g_vars;

enum class WarpOp { kSync, kShflIdx, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll };
enum class BarrierOp { kSync, kCount, kAnd, kOr };

// Block barrier; returns the reduction of `pred` for the count/and/or variants.
int SyncThreads(BarrierOp op, int pred);
// Warp collective over the lanes of `mask`: the raw 8-byte value of the source lane for
// shuffles, the ballot of pred != 0 for ballot/any/all (kAny/kAll return 0/1).
uint64_t WarpCollective(WarpOp op, unsigned mask, uint64_t value, int arg, int width);
unsigned ActiveMask();

}  // namespace detail
}  // namespace tandem::interp
