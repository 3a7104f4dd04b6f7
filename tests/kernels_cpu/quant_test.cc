// Quantized and 16-bit weights: the reference conversions (tandem/kernels/ref/dequant.h) on
// hand-computed values, and the panel GEMM on every weight storage against its contract — each
// stored weight widened to exactly ref::Dequantize's f32 value, then the f32 fma chain — bit for
// bit on odd shapes, every SIMD target of this machine, one and two threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/kernels/cpu/gemm.h"
#include "tandem/kernels/ref/dequant.h"

namespace tandem::kernels {
namespace {

using cpu::Gemm;
using cpu::PackedWeight;

constexpr DType kStorages[] = {DType::kF32, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};
constexpr DType kQuant[] = {DType::kQ8_0, DType::kQ4_0, DType::kQ4_1};

float F(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
uint32_t B(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

std::vector<uint8_t> QuantizeRows(DType d, const std::vector<float>& w) {
  std::vector<uint8_t> q(DTypeBytes(d, static_cast<int64_t>(w.size())));
  ref::Quantize(d, w.data(), static_cast<int64_t>(w.size()), q.data());
  return q;
}

std::vector<float> DequantizeAll(DType d, const std::vector<uint8_t>& q, int64_t elems) {
  std::vector<float> out(elems);
  ref::Dequantize(d, q.data(), elems, out.data());
  return out;
}

bool SameBits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// ---- half / bf16 ----

TEST(RefHalfTest, KnownValuesRoundToNearestEvenWithSubnormalsAndSpecials) {
  EXPECT_EQ(ref::FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(ref::FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(ref::FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(ref::FloatToHalf(65504.0f), 0x7bff);                          // largest finite
  EXPECT_EQ(ref::FloatToHalf(65519.99f), 0x7bff);                         // just below the tie
  EXPECT_EQ(ref::FloatToHalf(65520.0f), 0x7c00);                          // tie -> even (= inf)
  EXPECT_EQ(ref::FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie -> even
  EXPECT_EQ(ref::FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie -> even
  EXPECT_EQ(ref::FloatToHalf(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(ref::FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(ref::FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(ref::FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);  // tie -> even (0)
  EXPECT_EQ(ref::FloatToHalf(1.5f * std::ldexp(1.0f, -25)), 0x0001);
  EXPECT_EQ(ref::FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 ulp: tie -> even
  EXPECT_EQ(ref::FloatToHalf(5 * std::ldexp(1.0f, -25)), 0x0002);  // 2.5 ulp: tie -> even
  EXPECT_EQ(ref::FloatToHalf(1023 * std::ldexp(1.0f, -24)), 0x03ff);
  EXPECT_EQ(ref::FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(ref::FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t nan = ref::FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x3ff, 0);
  EXPECT_NE(ref::FloatToHalf(F(0x7f800001u)) & 0x3ff, 0);  // signalling NaN stays NaN

  EXPECT_EQ(ref::HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(ref::HalfToFloat(0x3555), 0x155 * std::ldexp(1.0f, -12) + 0.25f);
  EXPECT_EQ(ref::HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(ref::HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(ref::HalfToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(B(ref::HalfToFloat(0x8000)), 0x80000000u);
  EXPECT_EQ(ref::HalfToFloat(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(ref::HalfToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(ref::HalfToFloat(0x7c01)));
}

TEST(RefHalfTest, EveryHalfRoundTripsThroughF32) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = ref::HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(ref::HalfToFloat(ref::FloatToHalf(f)))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(ref::FloatToHalf(f), h) << std::hex << h;
  }
}

TEST(RefBf16Test, KnownValuesRoundToNearestEvenWithSubnormalsAndSpecials) {
  EXPECT_EQ(ref::FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(ref::FloatToBf16(F(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(ref::FloatToBf16(F(0x3f818000u)), 0x3f82);  // tie -> even
  EXPECT_EQ(ref::FloatToBf16(F(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(ref::FloatToBf16(F(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(ref::FloatToBf16(F(0x00008000u)), 0x0000);  // subnormal tie -> even
  EXPECT_EQ(ref::FloatToBf16(F(0x00018000u)), 0x0002);
  EXPECT_EQ(ref::FloatToBf16(F(0x00010001u)), 0x0001);
  EXPECT_EQ(ref::FloatToBf16(F(0x7f7fffffu)), 0x7f80);  // rounds past the largest: inf
  EXPECT_EQ(ref::FloatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  const uint16_t nan = ref::FloatToBf16(F(0x7f800001u));  // payload only in the low bits
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x7f, 0);
  EXPECT_EQ(ref::Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(ref::Bf16ToFloat(0x0001), F(0x00010000u));
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = ref::Bf16ToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(ref::FloatToBf16(f), b) << std::hex << b;
  }
}

// ---- GGUF blocks ----

TEST(RefQuantTest, Q8_0KnownBlock) {
  // amax 127 -> d = 1 (exact in f16); q = round half away from zero.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j - 16);
  x[0] = 127.0f;
  x[1] = 2.5f;
  x[2] = -2.5f;
  x[3] = 0.49f;
  const auto q = QuantizeRows(DType::kQ8_0, x);
  ASSERT_EQ(q.size(), 34u);
  EXPECT_EQ(q[0], 0x00);
  EXPECT_EQ(q[1], 0x3c);  // d = 1.0
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(q[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(q[5]), 0);
  for (int j = 4; j < 32; ++j) EXPECT_EQ(static_cast<int8_t>(q[2 + j]), j - 16) << j;
  const auto back = DequantizeAll(DType::kQ8_0, q, 32);
  EXPECT_EQ(back[0], 127.0f);
  EXPECT_EQ(back[1], 3.0f);
  EXPECT_EQ(back[2], -3.0f);
  EXPECT_EQ(back[3], 0.0f);
  // d = 0.5 (0x3800), q = -3 -> -1.5; all zeros -> d = 0.
  uint8_t blk[34] = {0x00, 0x38};
  blk[2] = static_cast<uint8_t>(-3);
  float out[32];
  ref::Dequantize(DType::kQ8_0, blk, 32, out);
  EXPECT_EQ(out[0], -1.5f);
  EXPECT_EQ(out[1], 0.0f);
  const auto zeros = QuantizeRows(DType::kQ8_0, std::vector<float>(32, 0.0f));
  for (uint8_t b : zeros) EXPECT_EQ(b, 0);
}

TEST(RefQuantTest, Q4_0KnownBlock) {
  // The value of largest magnitude is -8 -> d = -8 / -8 = 1; q = trunc(x / d + 8.5) = x + 8.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j % 16 - 8);
  const auto q = QuantizeRows(DType::kQ4_0, x);
  ASSERT_EQ(q.size(), 18u);
  EXPECT_EQ(q[0], 0x00);
  EXPECT_EQ(q[1], 0x3c);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q[2 + j], j | (j << 4)) << j;  // lo: j, hi: j + 16
  EXPECT_TRUE(SameBits(DequantizeAll(DType::kQ4_0, q, 32), x));
  // A positive extreme: max = 16 -> d = -2; 16 -> q 0 (-2 * -8 = 16), -14 -> q 15 (-2 * 7).
  std::vector<float> y(32, 0.0f);
  y[0] = 16.0f;
  y[17] = -14.0f;
  y[1] = -16.0f;  // would need q 16: clamped to 15 -> -14
  const auto qy = QuantizeRows(DType::kQ4_0, y);
  EXPECT_EQ(ref::HalfToFloat(static_cast<uint16_t>(qy[0] | qy[1] << 8)), -2.0f);
  const auto by = DequantizeAll(DType::kQ4_0, qy, 32);
  EXPECT_EQ(by[0], 16.0f);
  EXPECT_EQ(by[17], -14.0f);
  EXPECT_EQ(by[1], -14.0f);
  EXPECT_EQ(by[2], 0.0f);
  EXPECT_EQ(qy[2 + 0] & 0xf, 0);
  EXPECT_EQ(qy[2 + 1] >> 4, 15);  // element 17 in the high nibble of byte 1
}

TEST(RefQuantTest, Q4_1KnownBlock) {
  // min -1, max 14 -> d = 1, m = -1; q = trunc(x - m + 0.5).
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(j % 16 - 1);
  const auto q = QuantizeRows(DType::kQ4_1, x);
  ASSERT_EQ(q.size(), 20u);
  EXPECT_EQ(q[0], 0x00);
  EXPECT_EQ(q[1], 0x3c);  // d = 1
  EXPECT_EQ(q[2], 0x00);
  EXPECT_EQ(q[3], 0xbc);  // m = -1
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q[4 + j], j | (j << 4)) << j;
  EXPECT_TRUE(SameBits(DequantizeAll(DType::kQ4_1, q, 32), x));
  // Multiply, then add (not fused): d = 0.1 (f16), m = 1/3 (f16), nibble 7.
  uint8_t blk[20] = {};
  const uint16_t d = ref::FloatToHalf(0.1f), m = ref::FloatToHalf(1.0f / 3);
  blk[0] = d & 0xff, blk[1] = d >> 8, blk[2] = m & 0xff, blk[3] = m >> 8;
  blk[4] = 0x07;
  float out[32];
  ref::Dequantize(DType::kQ4_1, blk, 32, out);
  volatile float prod = ref::HalfToFloat(d) * 7.0f;
  EXPECT_EQ(B(out[0]), B(prod + ref::HalfToFloat(m)));
  EXPECT_EQ(B(out[16]), B(ref::HalfToFloat(m)));  // high nibble 0
}

TEST(RefQuantTest, RandomRoundTripsStayWithinHalfAStep) {
  const auto x = Random(32 * 64, 21);
  for (DType d : kQuant) {
    const auto q = QuantizeRows(d, x);
    const auto back = DequantizeAll(d, q, static_cast<int64_t>(x.size()));
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float lo = x[b * 32], hi = x[b * 32], amax = 0;
      for (int j = 0; j < 32; ++j) {
        lo = std::min(lo, x[b * 32 + j]);
        hi = std::max(hi, x[b * 32 + j]);
        amax = std::max(amax, std::fabs(x[b * 32 + j]));
      }
      // Step size; the f16 rounding of d (and m) adds up to 2^-11 relative.
      const float step = d == DType::kQ8_0   ? amax / 127
                         : d == DType::kQ4_0 ? amax / 8
                                             : (hi - lo) / 15;
      const float tol = (d == DType::kQ4_0 ? 1.0f : 0.5f) * step * 1.01f + 128 * step / 2048 +
                        std::fabs(lo) / 2048;
      for (int j = 0; j < 32; ++j) {
        ASSERT_LE(std::fabs(back[b * 32 + j] - x[b * 32 + j]), tol)
            << DTypeName(d) << " block " << b << " element " << j;
      }
    }
  }
}

// ---- PackedWeight ----

TEST(PackedWeightTest, PacksFromEverySourceDtypeIntoEveryStorageAndRowDequantizes) {
  const int64_t m = 33, k = 64;
  const auto w = Random(m * k, 31);
  for (DType src :
       {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    const auto src_bytes = QuantizeRows(src, w);
    const auto src_value = DequantizeAll(src, src_bytes, m * k);
    for (DType storage : kStorages) {
      auto pw = PackedWeight::Pack(src_bytes.data(), src, m, k, storage);
      ASSERT_TRUE(pw.ok()) << pw.status().message();
      EXPECT_EQ(pw->storage(), storage);
      EXPECT_EQ(pw->bytes(), pw->panels() * static_cast<int64_t>(DTypeBytes(storage, k)) * 16);
      // What storing does: the same q type as is, otherwise widen, then round / quantize.
      const auto want = src == storage
                            ? src_value
                            : DequantizeAll(storage, QuantizeRows(storage, src_value), m * k);
      for (int64_t r = 0; r < m; ++r) {
        std::vector<float> row(k), want_row(want.begin() + r * k, want.begin() + (r + 1) * k);
        pw->Row(r, row.data());
        ASSERT_TRUE(SameBits(row, want_row))
            << DTypeName(src) << " -> " << DTypeName(storage) << " row " << r;
      }
    }
  }
}

TEST(PackedWeightTest, SameQuantTypeKeepsTheBlocksAsTheyAre) {
  // Blocks no quantizer would produce (d = 1 with small q; a d that is not amax / 127): a
  // requantization would change them.
  const int64_t m = 3, k = 64;
  for (DType q : kQuant) {
    std::vector<uint8_t> blocks(DTypeBytes(q, m * k));
    std::mt19937 rng(7);
    for (auto& b : blocks) b = static_cast<uint8_t>(rng() & 0x33);
    const size_t bb = DTypeBlockBytes(q);
    for (size_t at = 0; at < blocks.size(); at += bb) {
      blocks[at] = 0x00, blocks[at + 1] = 0x3c;                             // d = 1
      if (q == DType::kQ4_1) blocks[at + 2] = 0x00, blocks[at + 3] = 0x38;  // m = 0.5
    }
    auto pw = PackedWeight::Pack(blocks.data(), q, m, k, q);
    ASSERT_TRUE(pw.ok());
    const auto want = DequantizeAll(q, blocks, m * k);
    for (int64_t r = 0; r < m; ++r) {
      std::vector<float> row(k), want_row(want.begin() + r * k, want.begin() + (r + 1) * k);
      pw->Row(r, row.data());
      ASSERT_TRUE(SameBits(row, want_row)) << DTypeName(q) << " row " << r;
    }
  }
}

TEST(PackedWeightTest, ErrorsNameTheShapeAndTheDtype) {
  const std::vector<float> w(3 * 48, 1.0f);
  auto not_block = PackedWeight::Pack(w.data(), DType::kF32, 3, 48, DType::kQ4_1);
  ASSERT_FALSE(not_block.ok());
  EXPECT_EQ(not_block.status().code(), StatusCode::kInvalidArgument);
  for (const char* part : {"m=3", "k=48", "q4_1"}) {
    EXPECT_NE(not_block.status().message().find(part), std::string::npos)
        << part << " in " << not_block.status().message();
  }
  std::vector<uint8_t> q(DTypeBytes(DType::kQ8_0, 2 * 32));
  auto src_not_block = PackedWeight::Pack(q.data(), DType::kQ8_0, 2, 40, DType::kF32);
  ASSERT_FALSE(src_not_block.ok());
  EXPECT_NE(src_not_block.status().message().find("q8_0"), std::string::npos);
  auto f16 = PackedWeight::Pack(w.data(), DType::kF32, 3, 48, DType::kF16);
  ASSERT_FALSE(f16.ok());
  EXPECT_EQ(f16.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(f16.status().message().find("f16"), std::string::npos);
  EXPECT_NE(f16.status().message().find("m=3"), std::string::npos);
  auto unknown = PackedWeight::Pack(w.data(), DType::kF32, 3, 48, static_cast<DType>(77));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("77"), std::string::npos);
  auto unknown_src = PackedWeight::Pack(w.data(), static_cast<DType>(9), 3, 48, DType::kF32);
  ASSERT_FALSE(unknown_src.ok());
  EXPECT_NE(unknown_src.status().message().find("9"), std::string::npos);
  EXPECT_TRUE(PackedWeight::Pack(w.data(), DType::kF32, 3, 48, DType::kBF16).ok());  // any k

  for (DType d : kStorages) EXPECT_EQ(*cpu::ParseWeightStorage(DTypeName(d)), d);
  for (const char* bad : {"f16", "q3_k", ""}) {
    auto s = cpu::ParseWeightStorage(bad);
    ASSERT_FALSE(s.ok()) << bad;
    const std::string quoted = std::string("'") + bad + "'";
    EXPECT_NE(s.status().message().find(quoted), std::string::npos);
  }
}

// ---- Gemm on every storage ----

// Gemm on `storage` vs Gemm on an f32 PackedWeight of the dequantized matrix: same bits, on
// every SIMD target, 1 and 2 threads, with and without bias.
TEST(QuantGemmTest, EqualsF32GemmOnTheDequantizedWeightsBitForBit) {
  const std::vector<std::string> targets = cpu::GemmTargets();
  ASSERT_FALSE(targets.empty());
  int64_t calls = 0;
  for (DType storage : kStorages) {
    for (int64_t m : {1, 15, 17, 33, 100}) {
      for (int64_t k : {32, 64, 96, 576}) {
        // Blocks of very different scales, one all-zero block (d = 0).
        auto w = Random(m * k, static_cast<uint32_t>(m * 1000 + k), 0.05f);
        for (int64_t i = 0; i < m * k; ++i) w[i] *= static_cast<float>(1 + (i / 32) % 5);
        if (m * k >= 64) std::fill(w.begin() + 32, w.begin() + 64, 0.0f);
        auto pw = PackedWeight::Pack(w.data(), DType::kF32, m, k, storage);
        ASSERT_TRUE(pw.ok());
        std::vector<float> deq(m * k);
        for (int64_t r = 0; r < m; ++r) pw->Row(r, deq.data() + r * k);
        const PackedWeight f32 = PackedWeight::Pack(deq.data(), m, k, DType::kF32);
        const auto bias = Random(m, 5);
        for (int64_t n : {1, 3, 8, 17, 64, 130}) {
          const auto x = Random(n * k, static_cast<uint32_t>(n + k));
          const bool with_bias = (n + m) % 2 == 0;
          const float* b = with_bias ? bias.data() : nullptr;
          std::vector<float> want(n * m);
          Gemm(x.data(), n, f32, b, want.data(), 1);
          for (size_t t = 0; t < targets.size(); ++t) {
            cpu::ForceGemmTarget(static_cast<int>(t));
            for (int threads : {1, 2}) {
              std::vector<float> got(n * m, -1.0f);
              Gemm(x.data(), n, *pw, b, got.data(), threads);
              ++calls;
              ASSERT_TRUE(SameBits(got, want))
                  << DTypeName(storage) << " m=" << m << " k=" << k << " n=" << n
                  << " bias=" << with_bias << " threads=" << threads << " on " << targets[t];
            }
          }
          cpu::ForceGemmTarget(-1);
        }
      }
    }
  }
  RecordProperty("gemm_calls", static_cast<int>(calls));
}

// Large enough that two threads really split the panels (above the parallel threshold), on
// both sides of kGemmStreamRows.
TEST(QuantGemmTest, RowsDoNotDependOnTheBatchOrTheThreads) {
  const int64_t k = 576, m = 1536;
  const auto w = Random(m * k, 41, 0.05f);
  const auto row = Random(k, 42);
  for (DType storage : kQuant) {
    auto pw = PackedWeight::Pack(w.data(), DType::kF32, m, k, storage);
    ASSERT_TRUE(pw.ok());
    std::vector<float> alone(m);
    Gemm(row.data(), 1, *pw, nullptr, alone.data(), 1);
    for (int64_t n : {cpu::kGemmStreamRows, cpu::kGemmStreamRows + 1, int64_t{33}}) {
      auto x = Random(n * k, 43);
      const int64_t at = n / 2;
      std::memcpy(x.data() + at * k, row.data(), k * sizeof(float));
      for (int threads : {1, 2, 3}) {
        std::vector<float> out(n * m);
        Gemm(x.data(), n, *pw, nullptr, out.data(), threads);
        ASSERT_EQ(0, std::memcmp(out.data() + at * m, alone.data(), m * sizeof(float)))
            << DTypeName(storage) << " n=" << n << " threads=" << threads;
      }
    }
  }
}

}  // namespace
}  // namespace tandem::kernels
