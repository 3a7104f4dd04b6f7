#include "tandem/kernels/ref/dequant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "tandem/common/logging.h"

namespace tandem::kernels::ref {
namespace {

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint32_t BitsOf(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

void Store16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    if (mant == 0) return Bits(sign);
    exp = 127 - 15 + 1;  // subnormal: normalise
    while (!(mant & 0x400u)) {
      mant <<= 1;
      --exp;
    }
    mant &= 0x3ffu;
    return Bits(sign | (exp << 23) | (mant << 13));
  }
  if (exp == 31) return Bits(sign | 0x7f800000u | (mant << 13));
  return Bits(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

float Bf16ToFloat(uint16_t b) { return Bits(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToBf16(float f) {
  const uint32_t b = BitsOf(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((b >> 16) | 0x40);  // NaN
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1)) >> 16);
}

uint16_t FloatToHalf(float f) {
  const uint32_t b = BitsOf(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;           // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;          // rounds past 65504: inf
  if (abs < 0x38800000u) {                                // below 2^-14: subnormal or zero
    if (abs < 0x33000000u) return sign;                   // below half the smallest subnormal
    const uint32_t e = abs >> 23;                         // 102 .. 112
    const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;  // implicit one
    const uint32_t shift = 126 - e;                       // 14 .. 24
    uint32_t q = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) ++q;
    return sign | static_cast<uint16_t>(q);
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1);  // round mantissa to 10 bits, ties to even
  r -= (127u - 15u) << 23;
  return sign | static_cast<uint16_t>(r >> 13);
}

void Dequantize(DType dtype, const void* src, int64_t elems, float* out) {
  const auto* p = static_cast<const uint8_t*>(src);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, src, elems * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < elems; ++i) out[i] = HalfToFloat(Load16(p + 2 * i));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < elems; ++i) out[i] = Bf16ToFloat(Load16(p + 2 * i));
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 34) {
        const float d = HalfToFloat(Load16(p));
        for (int j = 0; j < kQuantBlock; ++j) {
          out[b * kQuantBlock + j] = d * static_cast<float>(static_cast<int8_t>(p[2 + j]));
        }
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 18) {
        const float d = HalfToFloat(Load16(p));
        float* o = out + b * kQuantBlock;
        for (int j = 0; j < 16; ++j) {
          o[j] = d * static_cast<float>((p[2 + j] & 0xf) - 8);
          o[j + 16] = d * static_cast<float>((p[2 + j] >> 4) - 8);
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 20) {
        const float d = HalfToFloat(Load16(p)), m = HalfToFloat(Load16(p + 2));
        float* o = out + b * kQuantBlock;
        for (int j = 0; j < 16; ++j) {
          const float lo = d * static_cast<float>(p[4 + j] & 0xf);
          const float hi = d * static_cast<float>(p[4 + j] >> 4);
          o[j] = lo + m;
          o[j + 16] = hi + m;
        }
      }
      return;
  }
  TANDEM_CHECK(false && "Dequantize: unknown dtype");
}

void Quantize(DType dtype, const float* src, int64_t elems, void* out) {
  auto* p = static_cast<uint8_t*>(out);
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, src, elems * sizeof(float));
      return;
    case DType::kF16:
      for (int64_t i = 0; i < elems; ++i) Store16(p + 2 * i, FloatToHalf(src[i]));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < elems; ++i) Store16(p + 2 * i, FloatToBf16(src[i]));
      return;
    case DType::kQ8_0:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 34) {
        const float* x = src + b * kQuantBlock;
        float amax = 0;
        for (int j = 0; j < kQuantBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        Store16(p, FloatToHalf(d));
        for (int j = 0; j < kQuantBlock; ++j) {
          p[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(x[j] * id)));
        }
      }
      return;
    case DType::kQ4_0:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 18) {
        const float* x = src + b * kQuantBlock;
        float amax = 0, max = 0;
        for (int j = 0; j < kQuantBlock; ++j) {
          if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        }
        const float d = max / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
        Store16(p, FloatToHalf(d));
        for (int j = 0; j < 16; ++j) {
          const auto q0 = std::min<int>(15, static_cast<int>(x[j] * id + 8.5f));
          const auto q1 = std::min<int>(15, static_cast<int>(x[j + 16] * id + 8.5f));
          p[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
    case DType::kQ4_1:
      for (int64_t b = 0; b < elems / kQuantBlock; ++b, p += 20) {
        const float* x = src + b * kQuantBlock;
        float lo = x[0], hi = x[0];
        for (int j = 1; j < kQuantBlock; ++j) {
          lo = std::min(lo, x[j]);
          hi = std::max(hi, x[j]);
        }
        const float d = (hi - lo) / 15.0f, id = d != 0 ? 1.0f / d : 0.0f;
        Store16(p, FloatToHalf(d));
        Store16(p + 2, FloatToHalf(lo));
        for (int j = 0; j < 16; ++j) {
          const auto q0 = std::min<int>(15, static_cast<int>((x[j] - lo) * id + 0.5f));
          const auto q1 = std::min<int>(15, static_cast<int>((x[j + 16] - lo) * id + 0.5f));
          p[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
        }
      }
      return;
  }
  TANDEM_CHECK(false && "Quantize: unknown dtype");
}

}  // namespace tandem::kernels::ref
