#include "tandem/engine/cpu_ops.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

namespace tandem::cpu {
namespace {

// Below these sizes an op runs on the calling thread: a parallel region's barrier costs more
// than the work, and far more when other processes hold the cores. Results do not depend on
// the thread count (work items are fixed), so this changes speed only.
constexpr double kMinParallelFlops = 1 << 20;
constexpr int64_t kMinParallelElements = 1 << 15;

std::atomic<int> g_num_threads{0};

// exp(x) for x <= 0 (attention scores minus their maximum), within 2 ulp of expf: Cephes'
// range reduction x = k ln2 + r and degree-5 polynomial, in plain float arithmetic so that the
// compiler vectorises a loop of it (std::exp is a scalar call). Deterministic per element, so
// softmax rows stay independent of batch and chunking.
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);           // below: 2^-126 scale; the result rounds to ~0 either way
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float t = x * 1.44269504088896341f + kMagic;
  const float k = t - kMagic;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

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
    for (int64_t j = i * f; j < (i + 1) * f; ++j) {
      const float g = gate[j];
      out[j] = g / (1.0f + std::exp(-g)) * up[j];
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

void Rope(float* x, const int32_t* positions, const float* inv_freq, int64_t n, int64_t heads,
          int64_t head_dim) {
  const int64_t half = head_dim / 2;
#pragma omp parallel num_threads(NumThreads()) if (n * heads * head_dim > kMinParallelElements)
  {
    std::vector<float> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < half; ++j) {
        const float theta = static_cast<float>(positions[i]) * inv_freq[j];
        cs[j] = std::cos(theta);
        sn[j] = std::sin(theta);
      }
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

namespace {

// Dot for a length known at compile time (a multiple of 8): Dot's arithmetic exactly, the
// empty tail's 0 included.
template <int D>
inline float DotFixed(const float* a, const float* b) {
  static_assert(D % 8 == 0);
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < D; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[i + l] * b[i + l];
  }
  return (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) + 0.0f;
}

// One query head of one row over keys [first, pos]: scores in key order, softmax, then V
// accumulated in key order — the same arithmetic whatever else shares the call. The pages are
// looked up once per block (not per key), and with a head size known at compile time (D > 0)
// the output row stays in registers while the keys stream by.
template <int D>
void AttendHead(const KvCache& cache, int32_t layer, const float* qi, const int32_t* table,
                int64_t first, int64_t pos, int64_t kv_offset, int64_t d_runtime, float scale,
                float* scores, float* o) {
  const int64_t d = D > 0 ? D : d_runtime;
  const KvGeometry& l = cache.geometry();
  const int64_t ps = l.page_size, te = l.TokenElems();
  float max_s = -std::numeric_limits<float>::infinity();
  for (int64_t j0 = first; j0 <= pos;) {
    const int64_t b = j0 / ps, j1 = std::min(pos + 1, (b + 1) * ps);
    const float* keys = cache.Page(layer, table[b]) + kv_offset;  // slot 0 of the block
    for (int64_t j = j0; j < j1; ++j) {
      const float* kj = keys + (j - b * ps) * te;
      if constexpr (D > 0) {
        scores[j] = DotFixed<D>(qi, kj) * scale;
      } else {
        scores[j] = Dot(qi, kj, d) * scale;
      }
      max_s = std::max(max_s, scores[j]);
    }
    j0 = j1;
  }
  float denom = 0.0f;
  for (int64_t j = first; j <= pos; ++j) scores[j] = ExpNonPositive(scores[j] - max_s);
  for (int64_t j = first; j <= pos; ++j) denom += scores[j];
  auto accumulate = [&](float* a) {
    std::fill(a, a + d, 0.0f);
    for (int64_t j0 = first; j0 <= pos;) {
      const int64_t b = j0 / ps, j1 = std::min(pos + 1, (b + 1) * ps);
      const float* values = cache.Page(layer, table[b]) + ps * te + kv_offset;  // slot 0's V
      for (int64_t j = j0; j < j1; ++j) {
        const float p = scores[j] / denom;
        const float* vj = values + (j - b * ps) * te;
        for (int64_t e = 0; e < d; ++e) a[e] += p * vj[e];
      }
      j0 = j1;
    }
  };
  if constexpr (D > 0) {
    float acc[D];
    accumulate(acc);
    std::copy(acc, acc + D, o);
  } else {
    accumulate(o);
  }
}

}  // namespace

void PagedAttention(const KvCache& cache, int32_t layer, const float* q, const int32_t* positions,
                    const int32_t* const* block_tables, int64_t n, int64_t heads, int32_t window,
                    float scale, float* out) {
  const KvGeometry& l = cache.geometry();
  const int64_t d = l.head_dim, kv_heads = l.num_kv_heads, group = heads / kv_heads;
  double work = 0;  // multiply-adds, to decide whether threads pay for their barrier
  for (int64_t i = 0; i < n; ++i) work += 2.0 * (positions[i] + 1) * heads * d;
  auto* attend = d == 64    ? &AttendHead<64>
                 : d == 128 ? &AttendHead<128>
                 : d == 96  ? &AttendHead<96>
                            : &AttendHead<0>;
#pragma omp parallel num_threads(NumThreads()) if (work > kMinParallelFlops)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t pos = positions[i];
        const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
        scores.resize(pos + 1);
        attend(cache, layer, q + (i * heads + h) * d, block_tables[i], first, pos, (h / group) * d,
               d, scale, scores.data(), out + (i * heads + h) * d);
      }
    }
  }
}

}  // namespace tandem::cpu
