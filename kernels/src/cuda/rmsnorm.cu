#include "device_utils.cuh"
#include "tandem/kernels/cuda/rmsnorm.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 256;

// One block per row. Pass 1 adds the residual (storing the rounded sum) and accumulates the
// sum of squares of the stored values; pass 2 normalizes. Each thread re-reads only the
// elements it wrote itself, so no barrier is needed between the passes for x.
template <typename T>
__global__ void __launch_bounds__(kThreads) RmsNormKernel(RmsNormParams<T> p) {
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  T* x = p.x + row * p.dim;
  const T* res = p.residual != nullptr ? p.residual + row * p.dim : nullptr;
  T* out = p.out + row * p.dim;
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) {
    float v = detail::ToFloat(x[j]);
    if (res != nullptr) {
      const T stored = detail::FromFloat<T>(v + detail::ToFloat(res[j]));
      x[j] = stored;
      v = detail::ToFloat(stored);
    }
    sum += v * v;
  }
  sum = detail::BlockSum(sum, scratch);
  const float inv = 1.0f / sqrtf(sum / static_cast<float>(p.dim) + p.eps);
  for (int64_t j = threadIdx.x; j < p.dim; j += kThreads) {
    const float v = detail::ToFloat(x[j]);
    out[j] = detail::FromFloat<T>(v * inv * detail::ToFloat(p.weight[j]));
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchRmsNorm(const RmsNormParams<T>& p, cudaStream_t stream) {
  if (p.n < 0 || p.dim <= 0 || p.x == nullptr || p.weight == nullptr || p.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  if (p.n > 0x7fffffff) return cudaErrorInvalidValue;
  TANDEM_LAUNCH(RmsNormKernel<T>, static_cast<unsigned>(p.n), kThreads, 0, stream, p);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchRmsNorm<T>(const RmsNormParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
