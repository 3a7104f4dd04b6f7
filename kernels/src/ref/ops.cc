#include "tandem/kernels/ref/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace tandem::ref {

void Embedding(const float* table, const int32_t* ids, int64_t n, int64_t dim, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * dim, table + static_cast<int64_t>(ids[i]) * dim, dim * sizeof(float));
  }
}

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * dim;
    float sum = 0.0f;
    for (int64_t j = 0; j < dim; ++j) sum += row[j] * row[j];
    const float inv = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
    for (int64_t j = 0; j < dim; ++j) out[i * dim + j] = row[j] * inv * weight[j];
  }
}

void Matmul(const float* x, const float* w, const float* bias, int64_t n, int64_t k, int64_t m,
            float* out) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < m; ++o) {
      float acc = 0.0f;
      for (int64_t kk = 0; kk < k; ++kk) acc += x[i * k + kk] * w[o * k + kk];
      out[i * m + o] = (bias ? bias[o] : 0.0f) + acc;
    }
  }
}

void Rope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
          int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < half; ++j) {
      const float theta = static_cast<float>(positions[i]) * inv_freq[j];
      const float c = std::cos(theta), s = std::sin(theta);
      for (int64_t h = 0; h < heads; ++h) {
        float* head = x + (i * heads + h) * head_dim;
        const float a = head[j], b = head[j + half];
        head[j] = a * c - b * s;
        head[j + half] = b * c + a * s;
      }
    }
  }
}

void SwiGlu(const float* gate, const float* up, int64_t n, int64_t f, float* out) {
  for (int64_t i = 0; i < n * f; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void Attention(const float* q, const float* k, const float* v, const int32_t* q_pos, int64_t n,
               int64_t kv_len, int64_t heads, int64_t kv_heads, int64_t head_dim, int32_t window,
               float scale, float* out) {
  const int64_t group = heads / kv_heads;
  std::vector<float> scores(kv_len);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = q_pos[i];
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t kvh = h / group;
      const float* qi = q + (i * heads + h) * head_dim;
      float max_s = -std::numeric_limits<float>::infinity();
      for (int64_t j = first; j <= pos; ++j) {
        const float* kj = k + (j * kv_heads + kvh) * head_dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) dot += qi[d] * kj[d];
        scores[j] = dot * scale;
        max_s = std::max(max_s, scores[j]);
      }
      float denom = 0.0f;
      for (int64_t j = first; j <= pos; ++j) {
        scores[j] = std::exp(scores[j] - max_s);
        denom += scores[j];
      }
      float* o = out + (i * heads + h) * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) o[d] = 0.0f;
      for (int64_t j = first; j <= pos; ++j) {
        const float p = scores[j] / denom;
        const float* vj = v + (j * kv_heads + kvh) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) o[d] += p * vj[d];
      }
    }
  }
}

}  // namespace tandem::ref
