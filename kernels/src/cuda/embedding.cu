#include "device_utils.cuh"
#include "tandem/kernels/cuda/embedding.h"

namespace tandem::cuda {
namespace {

template <typename T>
__global__ void EmbeddingKernel(EmbeddingParams<T> p) {
  const int64_t i = blockIdx.x;
  const int32_t id = p.ids[i];
  const bool valid = id >= 0 && id < p.vocab;
  const T* src = p.table + static_cast<int64_t>(id) * p.dim;
  T* dst = p.out + i * p.dim;
  for (int64_t j = threadIdx.x; j < p.dim; j += blockDim.x) {
    dst[j] = valid ? src[j] : detail::FromFloat<T>(0.0f);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchEmbedding(const EmbeddingParams<T>& p, cudaStream_t stream) {
  if (p.n < 0 || p.dim <= 0 || p.vocab <= 0) return cudaErrorInvalidValue;
  if (p.n == 0) return cudaSuccess;
  if (p.n > 0x7fffffff) return cudaErrorInvalidValue;
  TANDEM_LAUNCH(EmbeddingKernel<T>, static_cast<unsigned>(p.n), 256, 0, stream, p);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchEmbedding<T>(const EmbeddingParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
