// The fast CPU path of every op but the matrix products (OpenMP threads, vectorised loops).
// Each op computes what its reference in tandem/kernels/ref/ops.h states, and is
// batch-invariant: a row's result depends only on that row's inputs — never on how many rows
// share the call or where the row sits. Tests check both properties.
#pragma once

#include <cstdint>
#include <vector>

#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_config.h"

namespace tandem::cpu {

// Threads every parallel op uses: SetNumThreads(n > 0), else OMP_NUM_THREADS / all cores.
// Results do not depend on it (work items are fixed-size).
int NumThreads();
void SetNumThreads(int n);

// Matrix products: kernels::cpu::Gemm (tandem/kernels/cpu/gemm.h).

// Dot product with eight fixed partial sums combined in a fixed tree.
float Dot(const float* a, const float* b, int64_t n);

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);

// out[i] += x[i] for `count` floats.
void AddInPlace(float* out, const float* x, int64_t count);

// out = gate / (1 + exp(-gate)) * up, exp within 1.01 ulp (FastExp: the same bits in the
// vector body and the scalar tail of a row).
void SwiGlu(const float* gate, const float* up, int64_t n, int64_t f, float* out);

// RoPE inverse frequencies [head_dim / 2] with the model's rope scaling applied (float32
// arithmetic as Hugging Face computes them).
std::vector<float> RopeInvFreq(const ModelConfig& config);

// cos and sin of positions[i] * inv_freq[j] ([n, head_dim / 2] each): what Rope turns q and k
// by. A forward pass computes them once and applies them to every layer's q and k.
struct RopeAngles {
  int64_t half = 0;
  std::vector<float> cos, sin;
};
RopeAngles RopeTable(const int32_t* positions, const float* inv_freq, int64_t n, int64_t head_dim);

// Rotates each of the `heads` heads of row i ([n, heads, head_dim]) by row i's angles.
void Rope(float* x, const RopeAngles& angles, int64_t n, int64_t heads, int64_t head_dim);
// The same with the angles computed here.
void Rope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
          int64_t head_dim);

// Writes each row's K and V ([n, kv_heads, head_dim]) into its sequence's pages of `layer`.
void WriteKv(KvCache& cache, int32_t layer, const float* k, const float* v,
             const int32_t* positions,            // [n]
             const int32_t* const* block_tables,  // [n] → that row's sequence block table
             int64_t n);

// Causal GQA attention of `n` query rows over the paged cache of `layer`. Row i sits at
// positions[i] and reads keys 0..positions[i] (within `window` when > 0) of its own sequence,
// always reduced in increasing position order, so the result does not depend on chunking.
// The query heads of one KV head are computed together (each key read once for all of them);
// the arithmetic is written out in paged_attention.cc.
void PagedAttention(const KvCache& cache, int32_t layer, const float* q,  // [n, heads, head_dim]
                    const int32_t* positions,                             // [n]
                    const int32_t* const* block_tables,                   // [n]
                    int64_t n, int64_t heads, int32_t window, float scale,
                    float* out);  // [n, heads, head_dim]

}  // namespace tandem::cpu
