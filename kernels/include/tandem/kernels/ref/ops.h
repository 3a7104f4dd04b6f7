// CPU reference implementations: the specification of every op. Plain loops in fp32 with
// one fixed accumulation order, no BLAS, no threads. Every fast path (the engine's CPU path,
// CUDA kernels) is tested against these element by element.
//
// Layout: row-major; a "row" is one token. Shapes are in the comment beside each pointer.
#pragma once

#include <cstdint>
#include <vector>

namespace tandem::ref {

// out[i, :] = table[ids[i], :]
void Embedding(const float* table,  // [vocab, dim]
               const int32_t* ids,  // [n]
               int64_t n, int64_t dim,
               float* out);  // [n, dim]

// out[i, j] = x[i, j] / sqrt(mean_j(x[i, j]^2) + eps) * weight[j]
void RmsNorm(const float* x,       // [n, dim]
             const float* weight,  // [dim]
             int64_t n, int64_t dim, float eps,
             float* out);  // [n, dim]; may alias x

// out[i, o] = bias[o] + sum_k x[i, k] * w[o, k]   (sum in increasing k)
void Matmul(const float* x,     // [n, k]
            const float* w,     // [m, k]  (PyTorch Linear layout)
            const float* bias,  // [m] or nullptr
            int64_t n, int64_t k, int64_t m,
            float* out);  // [n, m]

// Rotary embedding, Hugging Face "rotate half" convention. For pair j < d/2 of each head:
//   a = x[j], b = x[j + d/2], theta = pos * inv_freq[j]
//   x[j] = a cos(theta) - b sin(theta);  x[j + d/2] = b cos(theta) + a sin(theta)
void Rope(float* x,                  // [n, heads, head_dim], rotated in place
          const int32_t* positions,  // [n]
          const float* inv_freq,     // [head_dim / 2]
          int64_t n, int64_t heads, int64_t head_dim);

// out[i, j] = silu(gate[i, j]) * up[i, j],  silu(g) = g / (1 + exp(-g))
void SwiGlu(const float* gate,  // [n, f]
            const float* up,    // [n, f]
            int64_t n, int64_t f,
            float* out);  // [n, f]

// Causal grouped-query attention with an optional sliding window. Query i sits at position
// q_pos[i] and sees key j (position j) iff j <= q_pos[i] and (window == 0 || j > q_pos[i] -
// window). Query head h reads kv head h / (heads / kv_heads).
//   s_j = scale * <q[i,h], k[j,kvh]>;  p = softmax(s) over visible j;  out[i,h] = sum_j p_j
//   v[j,kvh]
void Attention(const float* q,        // [n, heads, head_dim]
               const float* k,        // [kv_len, kv_heads, head_dim]
               const float* v,        // [kv_len, kv_heads, head_dim]
               const int32_t* q_pos,  // [n], each < kv_len
               int64_t n, int64_t kv_len, int64_t heads, int64_t kv_heads, int64_t head_dim,
               int32_t window, float scale,
               float* out);  // [n, heads, head_dim]

}  // namespace tandem::ref
