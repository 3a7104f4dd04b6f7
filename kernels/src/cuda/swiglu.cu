#include "device_utils.cuh"
#include "tandem/kernels/cuda/swiglu.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) SwiGluKernel(SwiGluParams<T> p, int64_t in_stride) {
  const int64_t total = p.n * p.f;
  for (int64_t e = blockIdx.x * int64_t{kThreads} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * kThreads) {
    const int64_t i = e / p.f, j = e % p.f;
    const float g = detail::ToFloat(p.gate[i * in_stride + j]);
    const float u = detail::ToFloat(p.up[i * in_stride + j]);
    p.out[e] = detail::FromFloat<T>(g / (1.0f + expf(-g)) * u);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchSwiGlu(const SwiGluParams<T>& p, cudaStream_t stream) {
  if (p.n < 0 || p.f <= 0 || p.gate == nullptr || p.up == nullptr || p.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = p.n * p.f;
  if (total == 0) return cudaSuccess;
  const int64_t in_stride = p.in_stride != 0 ? p.in_stride : p.f;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  TANDEM_LAUNCH(SwiGluKernel<T>, grid, kThreads, 0, stream, p, in_stride);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchSwiGlu<T>(const SwiGluParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
