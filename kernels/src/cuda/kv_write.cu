#include "device_utils.cuh"
#include "tandem/kernels/cuda/kv_write.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;

// One block per token; threads copy (head, dim) elements of K then V. Pages store each
// (slot, head) row contiguously, so consecutive threads write consecutive addresses.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    KvWriteKernel(KvWriteParams<T> p, int64_t k_stride, int64_t v_stride) {
  const int64_t i = blockIdx.x;
  const int64_t s = p.slot_mapping[i];
  if (s < 0) return;
  const int32_t block = static_cast<int32_t>(s / p.cache.page_size);
  const int32_t slot = static_cast<int32_t>(s % p.cache.page_size);
  if (block >= p.cache.num_blocks) return;  // out of range: skipped, never written out of bounds
  const int row = p.cache.kv_heads * p.cache.head_dim;
  T* k_dst = p.cache.K(block, slot, 0);
  T* v_dst = p.cache.V(block, slot, 0);
  for (int e = threadIdx.x; e < row; e += kThreads) {
    k_dst[e] = p.k[i * k_stride + e];
    v_dst[e] = p.v[i * v_stride + e];
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchKvWrite(const KvWriteParams<T>& p, cudaStream_t stream) {
  if (!p.cache.Valid() || p.n < 0 || p.k == nullptr || p.v == nullptr ||
      p.slot_mapping == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  if (p.n > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t row = int64_t{p.cache.kv_heads} * p.cache.head_dim;
  TANDEM_LAUNCH(KvWriteKernel<T>, static_cast<unsigned>(p.n), kThreads, 0, stream, p,
                p.k_stride != 0 ? p.k_stride : row, p.v_stride != 0 ? p.v_stride : row);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchKvWrite<T>(const KvWriteParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
