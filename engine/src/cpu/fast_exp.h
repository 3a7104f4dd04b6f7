// exp for the CPU ops (softmax weights, SwiGlu's sigmoid): Cephes' range reduction
// x = k ln2 + r with a degree-5 polynomial, every step one fused multiply-add or one plain
// operation, written out twice: FastExp for one float and FastExp8 for eight AVX2 lanes. Both
// give the same bits for every input, so a loop may take any element down its vector body or its
// scalar tail without changing a result (a row's values never depend on where it sits).
// Within 1.01 ulp of exp on [-87, 88] (checked against double exp for every float there, where
// FastExp8 also matched FastExp bit for bit); inputs are clamped to that range (exp(-87) ~ 1.6e-38,
// exp(88) ~ 1.65e38), and a NaN input becomes exp(-87).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define TANDEM_CPU_AVX2 1
#else
#define TANDEM_CPU_AVX2 0
#endif

namespace tandem::cpu {
namespace fast_exp {
inline constexpr float kLo = -87.0f, kHi = 88.0f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
inline constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
inline constexpr float kP[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
}  // namespace fast_exp

inline float FastExp(float x) {
  using namespace fast_exp;
  x = x > kLo ? x : kLo;  // the operand order of vmaxps / vminps: a NaN becomes the bound
  x = x < kHi ? x : kHi;
  const float k = std::fma(x, kLog2e, kMagic) - kMagic;
  float r = std::fma(-k, kLn2Hi, x);
  r = std::fma(-k, kLn2Lo, r);
  float p = kP[0];
  for (int i = 1; i < 6; ++i) p = std::fma(p, r, kP[i]);
  const float y = std::fma(p, r * r, r) + 1.0f;
  const int32_t e = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof(scale));
  return y * scale;
}

#if TANDEM_CPU_AVX2
inline __m256 FastExp8(__m256 x) {
  using namespace fast_exp;
  x = _mm256_max_ps(x, _mm256_set1_ps(kLo));
  x = _mm256_min_ps(x, _mm256_set1_ps(kHi));
  const __m256 magic = _mm256_set1_ps(kMagic);
  const __m256 k = _mm256_sub_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(kLog2e), magic), magic);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kP[0]);
  for (int i = 1; i < 6; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kP[i]));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}
#endif

}  // namespace tandem::cpu
