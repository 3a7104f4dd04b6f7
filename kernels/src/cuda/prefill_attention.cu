#include "attention_core.cuh"
#include "tandem/kernels/cuda/prefill_attention.h"

namespace tandem::cuda {
namespace {

using detail::AttnSmem;
using detail::kAttnThreads;
using detail::kMaxRows;
using detail::kTile;

// Grid (row tile, kv head, sequence). A block's rows are kMaxRows consecutive entries of the
// flattened (query token, head in group) space of one kv head, so every K/V tile it loads
// serves the whole query group (GQA-aware).
template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads)
    PrefillAttentionKernel(PrefillAttentionParams<T> p, int group, int64_t q_stride) {
  TANDEM_DYNAMIC_SMEM(float, smem_raw);
  const AttnSmem<D> sm = AttnSmem<D>::Carve(smem_raw);
  const int b = blockIdx.z, kvh = blockIdx.y;
  const int q_begin = p.q_indptr[b];
  const int q_len = p.q_indptr[b + 1] - q_begin;
  const int total_rows = q_len * group;
  const int r0 = blockIdx.x * kMaxRows;
  if (r0 >= total_rows) return;  // uniform over the block
  const int rows = min(kMaxRows, total_rows - r0);
  const int first_pos = p.kv_lens[b] - q_len;

  detail::AttnInit(sm);
  for (int e = threadIdx.x; e < kMaxRows * D; e += kAttnThreads) {
    const int r = e / D, d = e % D;
    float v = 0.0f;
    if (r < rows) {
      const int gr = r0 + r;
      const int tok = gr / group, head = kvh * group + gr % group;
      v = detail::ToFloat(p.q[(q_begin + tok) * q_stride + int64_t{head} * D + d]);
    }
    sm.q[e] = v;
  }
  for (int r = threadIdx.x; r < kMaxRows; r += kAttnThreads) {
    sm.pos[r] = r < rows ? first_pos + (r0 + r) / group : -1;
  }
  __syncthreads();

  const int min_pos = first_pos + r0 / group;
  const int max_pos = first_pos + (r0 + rows - 1) / group;
  const int lo = p.window > 0 ? max(0, min_pos - p.window + 1) : 0;
  const int32_t* table_row = p.tables.table + int64_t{b} * p.tables.max_blocks_per_seq;
  detail::AttnRun<T, D>(sm, rows, p.cache, table_row, kvh, lo / kTile * kTile, max_pos + 1,
                        p.window, p.scale);

  for (int e = threadIdx.x; e < rows * D; e += kAttnThreads) {
    const int r = e / D, d = e % D;
    const int gr = r0 + r;
    const int tok = gr / group, head = kvh * group + gr % group;
    p.out[(int64_t{q_begin} + tok) * p.heads * D + int64_t{head} * D + d] =
        detail::FromFloat<T>(sm.o[e] / sm.l[r]);
  }
}

template <typename T, int D>
cudaError_t Launch(const PrefillAttentionParams<T>& p, cudaStream_t stream) {
  const int group = p.heads / p.cache.kv_heads;
  const int64_t q_stride = p.q_stride != 0 ? p.q_stride : int64_t{p.heads} * D;
  const int64_t row_tiles = (int64_t{p.max_q_len} * group + kMaxRows - 1) / kMaxRows;
  if (row_tiles > 0x7fffffff || p.batch > 65535) return cudaErrorInvalidValue;
  constexpr size_t kSmem = AttnSmem<D>::Bytes();
  auto* kernel = &PrefillAttentionKernel<T, D>;
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int{kSmem}));
  const dim3 grid(static_cast<unsigned>(row_tiles), p.cache.kv_heads, p.batch);
  TANDEM_LAUNCH(kernel, grid, kAttnThreads, kSmem, stream, p, group, q_stride);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

}  // namespace

template <typename T>
cudaError_t LaunchPrefillAttention(const PrefillAttentionParams<T>& p, cudaStream_t stream) {
  if (!p.cache.Valid() || p.q == nullptr || p.out == nullptr || p.q_indptr == nullptr ||
      p.kv_lens == nullptr || p.tables.table == nullptr || p.batch < 0 || p.heads <= 0 ||
      p.heads % p.cache.kv_heads != 0 || p.max_q_len < 0 || p.window < 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0 || p.max_q_len == 0) return cudaSuccess;
  TANDEM_DISPATCH_HEAD_DIM(p.cache.head_dim, kHeadDim, { return Launch<T, kHeadDim>(p, stream); })
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T) \
  template cudaError_t LaunchPrefillAttention<T>(const PrefillAttentionParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
