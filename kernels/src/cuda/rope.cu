#include "device_utils.cuh"
#include "tandem/kernels/cuda/rope.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 128;

// One block per token; threads walk (head, pair) of q then of k. cosf/sinf are the accurate
// (non --use_fast_math) versions, which handle large arguments (long contexts).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    RopeKernel(RopeParams<T> p, int64_t q_stride, int64_t k_stride) {
  const int64_t i = blockIdx.x;
  const int half = p.head_dim / 2;
  const float pos = static_cast<float>(p.positions[i]);
  const int q_work = p.heads * half;
  const int k_work = p.k != nullptr ? p.kv_heads * half : 0;
  for (int w = threadIdx.x; w < q_work + k_work; w += kThreads) {
    const bool is_q = w < q_work;
    const int local = is_q ? w : w - q_work;
    const int h = local / half, j = local % half;
    T* head =
        (is_q ? p.q + i * q_stride : p.k + i * k_stride) + static_cast<int64_t>(h) * p.head_dim;
    const float theta = pos * p.inv_freq[j];
    float s, c;
    sincosf(theta, &s, &c);
    const float a = detail::ToFloat(head[j]), b = detail::ToFloat(head[j + half]);
    head[j] = detail::FromFloat<T>(a * c - b * s);
    head[j + half] = detail::FromFloat<T>(b * c + a * s);
  }
}

}  // namespace

template <typename T>
cudaError_t LaunchRope(const RopeParams<T>& p, cudaStream_t stream) {
  if (p.n < 0 || p.heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0 || p.q == nullptr ||
      p.positions == nullptr || p.inv_freq == nullptr || (p.k != nullptr && p.kv_heads <= 0)) {
    return cudaErrorInvalidValue;
  }
  if (p.n == 0) return cudaSuccess;
  if (p.n > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t q_stride = p.q_stride != 0 ? p.q_stride : int64_t{p.heads} * p.head_dim;
  const int64_t k_stride = p.k_stride != 0 ? p.k_stride : int64_t{p.kv_heads} * p.head_dim;
  TANDEM_LAUNCH(RopeKernel<T>, static_cast<unsigned>(p.n), kThreads, 0, stream, p, q_stride,
                k_stride);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchRope<T>(const RopeParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
