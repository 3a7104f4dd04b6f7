// One launch site form for nvcc and the CPU interpreter (kernels/interp). Private to the
// kernels.
//
//   TANDEM_LAUNCH(kernel, grid, block, dynamic_smem, stream, args...);
//     nvcc: kernel<<<grid, block, dynamic_smem, stream>>>(args...). Interpreter: the arguments
//     are captured by value and the grid is run by the interpreter's scheduler. A kernel name
//     with a template argument list containing a comma goes in parentheses.
//   TANDEM_DYNAMIC_SMEM(T, name);
//     nvcc: extern __shared__ T name[]. Interpreter: T* name pointing at the block's buffer.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#ifdef TANDEM_CUDA_INTERP
#include "tandem/kernels/interp/runtime.h"
#endif

namespace tandem::cuda::detail {

template <typename... KArgs, typename... Args>
inline void LaunchKernel(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                         size_t dynamic_smem, cudaStream_t stream, Args&&... args) {
#ifdef TANDEM_CUDA_INTERP
  ::tandem::interp::Launch(name, kernel, grid, block, dynamic_smem, stream,
                           std::forward<Args>(args)...);
#else
  (void)name;
  // The chevrons must stay together, which clang-format does not know.
  // clang-format off
  kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

}  // namespace tandem::cuda::detail

#define TANDEM_LAUNCH(kernel, grid, block, dynamic_smem, stream, ...)                      \
  ::tandem::cuda::detail::LaunchKernel(#kernel, kernel, grid, block, dynamic_smem, stream, \
                                       __VA_ARGS__)

#ifdef TANDEM_CUDA_INTERP
#define TANDEM_DYNAMIC_SMEM(T, name) \
  T* const name = static_cast<T*>(::tandem::interp::DynamicSmem())
#else
#define TANDEM_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#endif
