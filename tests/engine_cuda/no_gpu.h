// Why CUDA tests cannot run here: "" when a device answers (a GPU, or always the interpreter),
// else the runtime's reason.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace tandem::testing {

inline std::string NoGpuReason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e);
  }
  return count > 0 ? "" : "no CUDA device";
}

}  // namespace tandem::testing
