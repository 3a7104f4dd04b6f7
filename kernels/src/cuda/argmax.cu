#include "device_utils.cuh"
#include "tandem/kernels/cuda/argmax.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 512;

template <typename T>
__global__ void __launch_bounds__(kThreads) ArgmaxKernel(ArgmaxParams<T> p) {
  __shared__ detail::ArgmaxCand scratch[32];
  const T* row = p.logits + blockIdx.x * p.vocab;
  detail::ArgmaxCand best{__int_as_float(0x7fc00000), 0x7fffffff};
  for (int64_t i = threadIdx.x; i < p.vocab; i += kThreads) {
    const detail::ArgmaxCand c{detail::ToFloat(row[i]), static_cast<int32_t>(i)};
    if (detail::Better(c, best)) best = c;
  }
  best = detail::BlockArgmax(best, scratch);
  if (threadIdx.x == 0) p.out[blockIdx.x] = best.index;
}

}  // namespace

template <typename T>
cudaError_t LaunchArgmax(const ArgmaxParams<T>& p, cudaStream_t stream) {
  if (p.rows < 0 || p.vocab <= 0 || p.vocab > 0x7fffffff || p.logits == nullptr ||
      p.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  if (p.rows > 0x7fffffff) return cudaErrorInvalidValue;
  TANDEM_LAUNCH(ArgmaxKernel<T>, static_cast<unsigned>(p.rows), kThreads, 0, stream, p);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchArgmax<T>(const ArgmaxParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
