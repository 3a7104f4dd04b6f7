// Paged causal GQA attention on the CPU (declared in tandem/engine/cpu_ops.h).
//
// Arithmetic of one query head of one row at position `pos` over keys [first, pos] — fixed,
// whatever else shares the call, so a row's output never depends on batching or chunking:
//   s[j] = Dot8(q, k_j) * scale, where Dot8 keeps eight partial sums (lane l takes the terms
//          i = l mod 8, one fused multiply-add each, in increasing i) combined as
//          ((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7));
//   w[j] = FastExp(s[j] - max s);  Z = Sum8(w over [first, pos]) (the same eight-lane scheme,
//          lanes by j - first, then the last (len mod 8) weights added in order);
//   o    = fma(w[j] / Z, v_j, o) over j in increasing order, from o = 0.
// With AVX2 the scores of eight keys are computed at once (their partial sums reduced by one
// transpose-and-add that performs exactly the additions above) and the output row stays in
// registers while the values stream by; the scalar code does the same operations one at a time,
// so both give the same bits.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "fast_exp.h"
#include "tandem/engine/cpu_ops.h"

namespace tandem::cpu {
namespace {

// Below this many multiply-adds a call runs on the calling thread (see cpu_ops.cc).
constexpr double kMinParallelFlops = 1 << 20;

float Dot8(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < d; ++i) acc[i % 8] = std::fma(a[i], b[i], acc[i % 8]);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Z: eight partial sums over w[0, len) by index mod 8 (only while a whole group of eight is
// left), combined as in Dot8, then the tail added in order.
float Sum8(const float* w, int64_t len) {
  const int64_t body = len / 8 * 8;
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
#if TANDEM_CPU_AVX2
  __m256 a = _mm256_setzero_ps();
  for (; j < body; j += 8) a = _mm256_add_ps(a, _mm256_loadu_ps(w + j));
  _mm256_storeu_ps(acc, a);
#endif
  for (; j < body; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += w[j + l];
  }
  float z = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; j < len; ++j) z += w[j];
  return z;
}

#if TANDEM_CPU_AVX2
// s[0, 8) = Dot8(q, key r) * scale for keys[r] (r < 8), d a multiple of 8: the eight keys'
// partial sums side by side, then the additions of Dot8 done lane-parallel.
inline void Scores8(const float* q, const float* const (&keys)[8], int64_t d, float scale,
                    float* s) {
  __m256 acc[8];
  for (int r = 0; r < 8; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += 8) {
    const __m256 qv = _mm256_loadu_ps(q + i);
    for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(keys[r] + i), acc[r]);
  }
  // c_r = [a0 + a4, a1 + a5, a2 + a6, a3 + a7] of key r (low half) and of key r + 4 (high).
  __m256 c[4];
  for (int r = 0; r < 4; ++r) {
    c[r] = _mm256_add_ps(_mm256_permute2f128_ps(acc[r], acc[r + 4], 0x20),
                         _mm256_permute2f128_ps(acc[r], acc[r + 4], 0x31));
  }
  // Pairwise: (a0 + a4) + (a1 + a5) and (a2 + a6) + (a3 + a7), then their sum, keys 0..7.
  const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(c[0], c[1]), _mm256_hadd_ps(c[2], c[3]));
  _mm256_storeu_ps(s, _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
}
#endif

// Softmax weights in place: w[0, len) = FastExp(s - max s) / Sum8(...).
void Softmax(float* w, int64_t len) {
  float max_s = w[0];
  for (int64_t j = 1; j < len; ++j) max_s = std::max(max_s, w[j]);
  int64_t j = 0;
#if TANDEM_CPU_AVX2
  for (const __m256 m = _mm256_set1_ps(max_s); j + 8 <= len; j += 8) {
    _mm256_storeu_ps(w + j, FastExp8(_mm256_sub_ps(_mm256_loadu_ps(w + j), m)));
  }
#endif
  for (; j < len; ++j) w[j] = FastExp(w[j] - max_s);
  const float z = Sum8(w, len);
  j = 0;
#if TANDEM_CPU_AVX2
  for (const __m256 zv = _mm256_set1_ps(z); j + 8 <= len; j += 8) {
    _mm256_storeu_ps(w + j, _mm256_div_ps(_mm256_loadu_ps(w + j), zv));
  }
#endif
  for (; j < len; ++j) w[j] /= z;
}

// One row at position `pos` over keys [first, pos] (arithmetic above), for the query heads of
// KV heads [kh0, kh1) (`group` query heads each; q and o: the row's heads x d floats). Keys go
// by in blocks of up to eight, each read once for every head that uses it, whole token rows at a
// time when [kh0, kh1) is every KV head. `s`: one row of `ld` >= pos + 1 + 8 floats per query
// head of the row. D > 0: the head size, known at compile time (a multiple of 8).
template <int D>
void AttendHeads(const KvCache& cache, int32_t layer, const float* q, int64_t kh0, int64_t kh1,
                 int64_t group, const int32_t* table, int64_t first, int64_t pos, int64_t d_runtime,
                 float scale, float* s, int64_t ld, float* o) {
  const int64_t d = D > 0 ? D : d_runtime;
  const KvGeometry& l = cache.geometry();
  const int64_t ps = l.page_size, te = l.TokenElems();
  const int64_t h0 = kh0 * group, h1 = kh1 * group;  // the query heads
  // Calls fn(j0, j1, rows) for each run of keys [j0, j1) in one page, rows + (j - j0) * te = the
  // token row of K (plane 0) or V (plane 1) of key j.
  auto for_each_page = [&](int plane, auto&& fn) {
    for (int64_t j0 = first; j0 <= pos;) {
      const int64_t b = j0 / ps, j1 = std::min(pos + 1, (b + 1) * ps);
      fn(j0, j1, cache.Page(layer, table[b]) + plane * ps * te + (j0 - b * ps) * te);
      j0 = j1;
    }
  };
  for_each_page(0, [&](int64_t j0, int64_t j1, const float* keys) {
    int64_t j = j0;
#if TANDEM_CPU_AVX2
    if (d % 8 == 0) {
      for (; j < j1; j += 8) {  // a short last group repeats its last key; s past j1 is rewritten
        for (int64_t kh = kh0; kh < kh1; ++kh) {
          const float* k8[8];
          for (int r = 0; r < 8; ++r) k8[r] = keys + (std::min(j + r, j1 - 1) - j0) * te + kh * d;
          for (int64_t h = kh * group; h < (kh + 1) * group; ++h) {
            Scores8(q + h * d, k8, d, scale, s + h * ld + j);
          }
        }
      }
    }
#endif
    for (; j < j1; ++j) {
      for (int64_t h = h0; h < h1; ++h) {
        s[h * ld + j] = Dot8(q + h * d, keys + (j - j0) * te + h / group * d, d) * scale;
      }
    }
  });
  for (int64_t h = h0; h < h1; ++h) Softmax(s + h * ld + first, pos + 1 - first);
  // Values in key order, one fused multiply-add per term, eight keys at a time per head.
  std::fill(o + h0 * d, o + h1 * d, 0.0f);
  for_each_page(1, [&](int64_t j0, int64_t j1, const float* values) {
    for (int64_t jb = j0; jb < j1; jb += 8) {
      const int64_t je = std::min(j1, jb + 8);
      for (int64_t h = h0; h < h1; ++h) {
        const float* p = s + h * ld;
        const float* vh = values + h / group * d;
        float* oh = o + h * d;
#if TANDEM_CPU_AVX2
        if constexpr (D > 0) {
          __m256 acc[D / 8];
          for (int e = 0; e < D / 8; ++e) acc[e] = _mm256_loadu_ps(oh + 8 * e);
          for (int64_t j = jb; j < je; ++j) {
            const __m256 pv = _mm256_set1_ps(p[j]);
            const float* vj = vh + (j - j0) * te;
            for (int e = 0; e < D / 8; ++e) {
              acc[e] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(vj + 8 * e), acc[e]);
            }
          }
          for (int e = 0; e < D / 8; ++e) _mm256_storeu_ps(oh + 8 * e, acc[e]);
          continue;
        }
#endif
        for (int64_t j = jb; j < je; ++j) {
          const float* vj = vh + (j - j0) * te;
          for (int64_t e = 0; e < d; ++e) oh[e] = std::fma(p[j], vj[e], oh[e]);
        }
      }
    }
  });
}

}  // namespace

void PagedAttention(const KvCache& cache, int32_t layer, const float* q, const int32_t* positions,
                    const int32_t* const* block_tables, int64_t n, int64_t heads, int32_t window,
                    float scale, float* out) {
  const KvGeometry& l = cache.geometry();
  const int64_t d = l.head_dim, kv_heads = l.num_kv_heads, group = heads / kv_heads;
  double work = 0;  // multiply-adds, to decide whether threads pay for their barrier
  int64_t max_pos = 0;
  for (int64_t i = 0; i < n; ++i) {
    work += 2.0 * (positions[i] + 1) * heads * d;
    max_pos = std::max<int64_t>(max_pos, positions[i]);
  }
  auto* attend = d == 64    ? &AttendHeads<64>
                 : d == 128 ? &AttendHeads<128>
                 : d == 96  ? &AttendHeads<96>
                            : &AttendHeads<0>;
  const int64_t ld = max_pos + 1 + 8;
  const int threads = NumThreads();
  const bool parallel = threads > 1 && work > kMinParallelFlops;
  // Work items: whole rows (their K and V pages stream by in token rows) when there are enough
  // of them to share out; otherwise one item per KV head, so that a few long rows still use
  // every thread. Which one changes nothing in the results.
  const int64_t splits = parallel && n < 2 * threads ? kv_heads : 1;
  const int64_t per_split = kv_heads / splits;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    std::vector<float> scores(static_cast<size_t>(heads * ld));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t part = 0; part < splits; ++part) {
        const int64_t pos = positions[i];
        const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
        attend(cache, layer, q + i * heads * d, part * per_split, (part + 1) * per_split, group,
               block_tables[i], first, pos, d, scale, scores.data(), ld, out + i * heads * d);
      }
    }
  }
}

}  // namespace tandem::cpu
