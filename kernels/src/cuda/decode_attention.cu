#include <algorithm>

#include "attention_core.cuh"
#include "tandem/kernels/cuda/decode_attention.h"

namespace tandem::cuda {
namespace {

using detail::AttnSmem;
using detail::kAttnThreads;
using detail::kMaxRows;
using detail::kTile;

constexpr int kMaxFastSplits = 64;

struct SplitPlan {
  int chunk = 0;   // positions per split, multiple of kTile
  int splits = 0;  // splits for max_seq_len
};

template <typename T>
SplitPlan PlanSplits(const DecodeAttentionParams<T>& p) {
  SplitPlan plan;
  const int max_len = p.max_seq_len > 0 ? p.max_seq_len : 1;
  if (p.deterministic) {
    plan.chunk = p.deterministic_chunk;
  } else {
    int device = 0, sms = 132;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      sms = 132;
      (void)cudaGetLastError();
    }
    const int64_t blocks = int64_t{p.batch} * p.cache.kv_heads;
    int64_t splits = (2 * int64_t{sms} + blocks - 1) / blocks;
    const int64_t max_splits = (max_len + kTile - 1) / kTile;
    splits = std::max<int64_t>(1, std::min<int64_t>({splits, max_splits, kMaxFastSplits}));
    const int64_t per = (max_len + splits - 1) / splits;
    plan.chunk = static_cast<int>((per + kTile - 1) / kTile * kTile);
  }
  plan.splits = (max_len + plan.chunk - 1) / plan.chunk;
  return plan;
}

// Partials: o [batch, heads, splits, D] unnormalized, ml [batch, heads, splits, 2] = (m, l).
template <typename T, int D>
__global__ void __launch_bounds__(kAttnThreads)
    DecodeSplitKernel(DecodeAttentionParams<T> p, int group, int64_t q_stride, int chunk,
                      int splits, float* part_o, float* part_ml) {
  TANDEM_DYNAMIC_SMEM(float, smem_raw);
  const AttnSmem<D> sm = AttnSmem<D>::Carve(smem_raw);
  const int split = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int seq_len = p.seq_lens[b];
  const int lo = split * chunk;
  if (lo >= seq_len) return;  // this split does not exist for b; pass 2 never reads it
  const int hi = min(seq_len, lo + chunk);
  const int pos = seq_len - 1;

  detail::AttnInit(sm);
  for (int e = threadIdx.x; e < kMaxRows * D; e += kAttnThreads) {
    const int g = e / D, d = e % D;
    sm.q[e] =
        g < group ? detail::ToFloat(p.q[b * q_stride + int64_t{kvh * group + g} * D + d]) : 0.0f;
  }
  for (int r = threadIdx.x; r < kMaxRows; r += kAttnThreads) sm.pos[r] = r < group ? pos : -1;
  __syncthreads();

  // Skip whole tiles before the window (they are fully masked, so skipping changes nothing).
  int begin = lo;
  if (p.window > 0) {
    const int first_visible = max(0, pos - p.window + 1);
    if (first_visible > begin) begin = first_visible / kTile * kTile;
  }
  const int32_t* table_row = p.tables.table + int64_t{b} * p.tables.max_blocks_per_seq;
  if (begin < hi) {
    detail::AttnRun<T, D>(sm, group, p.cache, table_row, kvh, begin, hi, p.window, p.scale);
  }
  for (int e = threadIdx.x; e < group * D; e += kAttnThreads) {
    const int g = e / D, d = e % D;
    const int64_t idx = (int64_t{b} * p.heads + kvh * group + g) * splits + split;
    part_o[idx * D + d] = sm.o[e];
    if (d == 0) {
      part_ml[idx * 2] = sm.m[g];
      part_ml[idx * 2 + 1] = sm.l[g];
    }
  }
}

// Pass 2: grid (head, sequence). Merges splits 0..n-1 of the sequence in order.
template <typename T, int D>
__global__ void __launch_bounds__(D)
    DecodeMergeKernel(DecodeAttentionParams<T> p, int chunk, int splits, const float* part_o,
                      const float* part_ml) {
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const int n = (p.seq_lens[b] + chunk - 1) / chunk;
  const int64_t base = (int64_t{b} * p.heads + h) * splits;
  float m = -INFINITY;
  for (int s = 0; s < n; ++s) m = fmaxf(m, part_ml[(base + s) * 2]);
  float num = 0.0f, den = 0.0f;
  for (int s = 0; s < n; ++s) {
    const float ms = part_ml[(base + s) * 2];
    if (ms == -INFINITY) continue;  // split saw nothing (before the window)
    const float w = expf(ms - m);
    num += w * part_o[(base + s) * D + d];
    den += w * part_ml[(base + s) * 2 + 1];
  }
  p.out[(int64_t{b} * p.heads + h) * D + d] = detail::FromFloat<T>(num / den);
}

template <typename T, int D>
cudaError_t Launch(const DecodeAttentionParams<T>& p, cudaStream_t stream) {
  const int group = p.heads / p.cache.kv_heads;
  const int64_t q_stride = p.q_stride != 0 ? p.q_stride : int64_t{p.heads} * D;
  const SplitPlan plan = PlanSplits(p);
  if (p.workspace == nullptr || p.workspace_bytes < DecodeAttentionWorkspaceBytes(p) ||
      plan.splits > 0x7fffffff || p.batch > 65535) {
    return cudaErrorInvalidValue;
  }
  float* part_o = p.workspace;
  float* part_ml = part_o + int64_t{p.batch} * p.heads * plan.splits * D;
  constexpr size_t kSmem = AttnSmem<D>::Bytes();
  auto* split_kernel = &DecodeSplitKernel<T, D>;
  TANDEM_CUDA_RETURN_IF_ERROR(
      cudaFuncSetAttribute(split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int{kSmem}));
  TANDEM_LAUNCH(split_kernel, dim3(plan.splits, p.cache.kv_heads, p.batch), kAttnThreads, kSmem,
                stream, p, group, q_stride, plan.chunk, plan.splits, part_o, part_ml);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  TANDEM_LAUNCH((DecodeMergeKernel<T, D>), dim3(p.heads, p.batch), D, 0, stream, p, plan.chunk,
                plan.splits, part_o, part_ml);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

}  // namespace

template <typename T>
size_t DecodeAttentionWorkspaceBytes(const DecodeAttentionParams<T>& p) {
  if (p.batch <= 0 || p.heads <= 0 || p.cache.kv_heads <= 0) return 0;
  const SplitPlan plan = PlanSplits(p);
  const size_t rows = size_t(p.batch) * p.heads * plan.splits;
  return sizeof(float) * rows * (size_t(p.cache.head_dim) + 2);
}

template <typename T>
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams<T>& p, cudaStream_t stream) {
  if (!p.cache.Valid() || p.q == nullptr || p.out == nullptr || p.seq_lens == nullptr ||
      p.tables.table == nullptr || p.batch < 0 || p.heads <= 0 || p.heads % p.cache.kv_heads != 0 ||
      p.window < 0 || p.max_seq_len < 0 ||
      (p.deterministic && (p.deterministic_chunk <= 0 || p.deterministic_chunk % kTile != 0))) {
    return cudaErrorInvalidValue;
  }
  if (p.heads / p.cache.kv_heads > kMaxRows) return cudaErrorNotSupported;
  if (p.batch == 0) return cudaSuccess;
  TANDEM_DISPATCH_HEAD_DIM(p.cache.head_dim, kHeadDim, { return Launch<T, kHeadDim>(p, stream); })
  return cudaSuccess;
}

#define TANDEM_INSTANTIATE(T)                                                        \
  template size_t DecodeAttentionWorkspaceBytes<T>(const DecodeAttentionParams<T>&); \
  template cudaError_t LaunchDecodeAttention<T>(const DecodeAttentionParams<T>&, cudaStream_t);
TANDEM_FOR_EACH_DTYPE(TANDEM_INSTANTIATE)
#undef TANDEM_INSTANTIATE

}  // namespace tandem::cuda
