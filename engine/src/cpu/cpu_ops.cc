#include "tandem/engine/cpu_ops.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "fast_exp.h"

namespace tandem::cpu {
namespace {

// Below this size an op runs on the calling thread: a parallel region's barrier costs more
// than the work, and far more when other processes hold the cores. Results do not depend on
// the thread count (work items are fixed), so this changes speed only.
constexpr int64_t kMinParallelElements = 1 << 15;

std::atomic<int> g_num_threads{0};

}  // namespace

int NumThreads() {
  int t = g_num_threads.load(std::memory_order_relaxed);
  if (t <= 0) {
    int expected = 0;
    const int fallback = std::max(1, omp_get_max_threads());
    g_num_threads.compare_exchange_strong(expected, fallback);
    t = g_num_threads.load(std::memory_order_relaxed);
  }
  return t;
}

void SetNumThreads(int n) {
  if (n > 0) g_num_threads.store(n, std::memory_order_relaxed);
}

float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + tail;
}

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out) {
#pragma omp parallel for num_threads(NumThreads()) \
    schedule(static) if (n * dim > kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * dim;
    const float inv = 1.0f / std::sqrt(Dot(row, row, dim) / static_cast<float>(dim) + eps);
    float* o = out + i * dim;
    for (int64_t j = 0; j < dim; ++j) o[j] = row[j] * inv * weight[j];
  }
}

void AddInPlace(float* out, const float* x, int64_t count) {
  for (int64_t i = 0; i < count; ++i) out[i] += x[i];
}

void SwiGlu(const float* gate, const float* up, int64_t n, int64_t f, float* out) {
#pragma omp parallel for num_threads(NumThreads()) \
    schedule(static) if (n * f > kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    int64_t j = i * f;
    const int64_t end = (i + 1) * f;
#if TANDEM_CPU_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; j + 8 <= end; j += 8) {
      const __m256 g = _mm256_loadu_ps(gate + j);
      const __m256 e = FastExp8(_mm256_xor_ps(g, sign));
      _mm256_storeu_ps(
          out + j, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + j)));
    }
#endif
    for (; j < end; ++j) {  // the same operations as the lanes above
      const float g = gate[j];
      out[j] = g / (1.0f + FastExp(-g)) * up[j];
    }
  }
}

std::vector<float> RopeInvFreq(const ModelConfig& c) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(half);
  const float base = static_cast<float>(c.rope_theta);
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    inv[i] = 1.0f / std::pow(base, e);
  }
  const RopeScaling& s = c.rope_scaling;
  const float factor = static_cast<float>(s.factor);
  if (s.type == RopeScaling::Type::kLinear) {
    for (auto& f : inv) f /= factor;
  } else if (s.type == RopeScaling::Type::kLlama3) {
    // Hugging Face _compute_llama3_parameters: long wavelengths are divided by `factor`,
    // short ones kept, and the band between is interpolated smoothly.
    const float old_len = static_cast<float>(s.original_max_position_embeddings);
    const float low = static_cast<float>(s.low_freq_factor);
    const float high = static_cast<float>(s.high_freq_factor);
    const float low_freq_wavelen = old_len / low;
    const float high_freq_wavelen = old_len / high;
    const float pi = 3.141592653589793f;
    for (auto& f : inv) {
      const float wavelen = 2.0f * pi / f;
      float scaled = wavelen > low_freq_wavelen ? f / factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const float smooth = (old_len / wavelen - low) / (high - low);
        scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
      }
      f = scaled;
    }
  }
  return inv;
}

RopeAngles RopeTable(const int32_t* positions, const float* inv_freq, int64_t n, int64_t head_dim) {
  RopeAngles a;
  a.half = head_dim / 2;
  a.cos.resize(n * a.half);
  a.sin.resize(n * a.half);
#pragma omp parallel for num_threads(NumThreads()) \
    schedule(static) if (n * a.half > kMinParallelElements / 16)
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < a.half; ++j) {
      const float theta = static_cast<float>(positions[i]) * inv_freq[j];
      a.cos[i * a.half + j] = std::cos(theta);
      a.sin[i * a.half + j] = std::sin(theta);
    }
  }
  return a;
}

void Rope(float* x, const RopeAngles& angles, int64_t n, int64_t heads, int64_t head_dim) {
  const int64_t half = angles.half;
#pragma omp parallel for num_threads(NumThreads()) \
    schedule(static) if (n * heads * head_dim > kMinParallelElements)
  for (int64_t i = 0; i < n; ++i) {
    const float* cs = angles.cos.data() + i * half;
    const float* sn = angles.sin.data() + i * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* head = x + (i * heads + h) * head_dim;
      for (int64_t j = 0; j < half; ++j) {
        const float a = head[j], b = head[j + half];
        head[j] = a * cs[j] - b * sn[j];
        head[j + half] = b * cs[j] + a * sn[j];
      }
    }
  }
}

void Rope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
          int64_t head_dim) {
  Rope(x, RopeTable(positions, inv_freq, n, head_dim), n, heads, head_dim);
}

void WriteKv(KvCache& cache, int32_t layer, const float* k, const float* v,
             const int32_t* positions, const int32_t* const* block_tables, int64_t n) {
  const KvGeometry& l = cache.geometry();
  const size_t bytes = l.TokenElems() * sizeof(float);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t block = block_tables[i][positions[i] / l.page_size];
    const int32_t slot = positions[i] % l.page_size;
    std::memcpy(cache.Key(layer, block, slot), k + i * l.TokenElems(), bytes);
    std::memcpy(cache.Value(layer, block, slot), v + i * l.TokenElems(), bytes);
  }
}

}  // namespace tandem::cpu
