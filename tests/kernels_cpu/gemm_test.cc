// The panel GEMM against its contract (the sequential-fma formula, bit for bit), against the
// reference ops (within rounding) on odd shapes, and its invariances: a row's result does not
// depend on the batch it is in, its place there, or the thread count.
#include "tandem/kernels/cpu/gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "tandem/kernels/ref/ops.h"

namespace tandem::kernels::cpu {
namespace {

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// bf16 rounding (nearest, ties to even) of every element, as f32.
std::vector<float> RoundedToBf16(std::vector<float> v) {
  for (auto& f : v) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof(u));
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    std::memcpy(&f, &u, sizeof(u));
  }
  return v;
}

// The contract of gemm.h, written as plainly as possible.
std::vector<float> Contract(const std::vector<float>& x, const std::vector<float>& w,
                            const float* bias, int64_t n, int64_t k, int64_t m) {
  std::vector<float> out(n * m);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < m; ++o) {
      float acc = 0.0f;
      for (int64_t j = 0; j < k; ++j) acc = std::fma(x[i * k + j], w[o * k + j], acc);
      out[i * m + o] = bias ? acc + bias[o] : acc;
    }
  }
  return out;
}

using Shape = std::tuple<int64_t, int64_t, int64_t>;  // n, k, m
const std::vector<Shape> kOddShapes = {{1, 1, 1},    {1, 37, 101}, {3, 37, 1},    {5, 17, 16},
                                       {6, 64, 17},  {7, 3, 33},   {9, 1002, 13}, {13, 100, 48},
                                       {17, 64, 96}, {2, 576, 15}, {8, 96, 40},   {32, 64, 20}};

TEST(CpuGemmTest, EqualsTheSequentialFmaContractBitForBit) {
  for (DType storage : {DType::kF32, DType::kBF16}) {
    for (auto [n, k, m] : kOddShapes) {
      for (bool with_bias : {false, true}) {
        auto x = Random(n * k, 1), w = Random(m * k, 2), b = Random(m, 3);
        const PackedWeight pw = PackedWeight::Pack(w.data(), m, k, storage);
        if (storage == DType::kBF16) w = RoundedToBf16(w);
        const float* bias = with_bias ? b.data() : nullptr;
        std::vector<float> got(n * m, -1.0f);
        Gemm(x.data(), n, pw, bias, got.data(), 2);
        const auto want = Contract(x, w, bias, n, k, m);
        ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
            << DTypeName(storage) << " n=" << n << " k=" << k << " m=" << m << " bias=" << with_bias
            << " on " << GemmTarget();
      }
    }
  }
}

// GemmMany (threads split the panels of several matrices) gives each matrix the bits Gemm
// gives it, whatever the thread count; matrices of different storages and of no rows included.
TEST(CpuGemmTest, GemmManyGivesEachMatrixTheBitsOfGemm) {
  const int64_t k = 576;  // 331 KiB of f32 in the first matrix: enough for threads
  const std::vector<std::tuple<int64_t, DType, bool>> mats = {{130, DType::kF32, true},
                                                              {16, DType::kBF16, false},
                                                              {0, DType::kF32, false},
                                                              {33, DType::kQ8_0, true}};
  for (int64_t n : {1, 8, 13}) {
    auto x = Random(n * k, 31);
    std::vector<PackedWeight> pws;
    std::vector<std::vector<float>> biases, want;
    for (size_t i = 0; i < mats.size(); ++i) {
      const auto [m, storage, with_bias] = mats[i];
      auto w = Random(m * k, 40 + static_cast<uint32_t>(i));
      pws.push_back(PackedWeight::Pack(w.data(), m, k, storage));
      biases.push_back(with_bias ? Random(m, 50 + static_cast<uint32_t>(i)) : std::vector<float>());
      want.emplace_back(n * m);
      Gemm(x.data(), n, pws.back(), with_bias ? biases.back().data() : nullptr, want.back().data(),
           1);
    }
    for (int threads : {1, 2, 3}) {
      std::vector<std::vector<float>> got;
      std::vector<GemmOutput> outs;
      for (size_t i = 0; i < mats.size(); ++i) got.emplace_back(want[i].size(), -1.0f);
      for (size_t i = 0; i < mats.size(); ++i) {
        outs.push_back({&pws[i], biases[i].empty() ? nullptr : biases[i].data(), got[i].data()});
      }
      GemmMany(x.data(), n, outs, threads);
      for (size_t i = 0; i < mats.size(); ++i) {
        ASSERT_EQ(0, std::memcmp(got[i].data(), want[i].data(), got[i].size() * sizeof(float)))
            << "matrix " << i << " n=" << n << " threads=" << threads;
      }
    }
  }
}

TEST(CpuGemmTest, EverySimdTargetOfThisMachineGivesTheSameBits) {
  const int64_t n = 7, k = 133, m = 45;
  auto x = Random(n * k, 12), w = Random(m * k, 13), b = Random(m, 14);
  for (DType storage : {DType::kF32, DType::kBF16}) {
    const PackedWeight pw = PackedWeight::Pack(w.data(), m, k, storage);
    const std::vector<std::string> targets = GemmTargets();
    ASSERT_FALSE(targets.empty());
    std::string names;
    for (const auto& t : targets) names += " " + t;
    RecordProperty("targets", names);
    if (storage == DType::kF32) std::printf("SIMD targets compared:%s\n", names.c_str());
    std::vector<float> first;
    for (size_t t = 0; t < targets.size(); ++t) {
      ForceGemmTarget(static_cast<int>(t));
      std::vector<float> got(n * m);
      Gemm(x.data(), n, pw, b.data(), got.data(), 1);
      if (t == 0) {
        first = got;
        continue;
      }
      ASSERT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * sizeof(float)))
          << DTypeName(storage) << ": " << targets[t] << " differs from " << targets[0];
    }
    ForceGemmTarget(-1);
  }
}

TEST(CpuGemmTest, MatchesTheReferenceOnOddShapes) {
  for (auto [n, k, m] : kOddShapes) {
    auto x = Random(n * k, 4), w = Random(m * k, 5), b = Random(m, 6);
    const PackedWeight pw = PackedWeight::Pack(w.data(), m, k, DType::kF32);
    std::vector<float> got(n * m), ref(n * m);
    Gemm(x.data(), n, pw, b.data(), got.data(), 1);
    tandem::ref::Matmul(x.data(), w.data(), b.data(), n, k, m, ref.data());
    for (size_t i = 0; i < got.size(); ++i) {
      // Two float summation orders of k terms of size ~1: within k ulps-ish of each other.
      ASSERT_NEAR(got[i], ref[i], 1e-5f * static_cast<float>(k) + 1e-5f * std::fabs(ref[i]))
          << "element " << i << " of n=" << n << " k=" << k << " m=" << m;
    }
  }
}

TEST(CpuGemmTest, RowsDoNotDependOnTheBatchOrTheirPlaceInIt) {
  const int64_t k = 576, m = 1536;
  for (DType storage : {DType::kF32, DType::kBF16}) {
    auto w = Random(m * k, 7);
    const PackedWeight pw = PackedWeight::Pack(w.data(), m, k, storage);
    auto row = Random(k, 8);
    std::vector<float> alone(m);
    Gemm(row.data(), 1, pw, nullptr, alone.data(), 2);
    // Tiles of every size up to 6 rows, and splits of 8, 10, 13, 23 and 33 rows into them.
    for (int64_t n : {2, 5, 6, 7, 8, 10, 12, 13, 23, 33}) {
      for (int64_t at : {int64_t{0}, n / 2, n - 1}) {
        auto x = Random(n * k, 100 + static_cast<uint32_t>(n));
        std::memcpy(x.data() + at * k, row.data(), k * sizeof(float));
        std::vector<float> out(n * m);
        Gemm(x.data(), n, pw, nullptr, out.data(), 2);
        ASSERT_EQ(0, std::memcmp(out.data() + at * m, alone.data(), m * sizeof(float)))
            << DTypeName(storage) << ": row at " << at << " of " << n;
      }
    }
  }
}

TEST(CpuGemmTest, ResultsDoNotDependOnTheThreadCount) {
  const int64_t n = 37, k = 300, m = 1000;
  auto x = Random(n * k, 9), w = Random(m * k, 10);
  const PackedWeight pw = PackedWeight::Pack(w.data(), m, k, DType::kF32);
  std::vector<float> one(n * m);
  Gemm(x.data(), n, pw, nullptr, one.data(), 1);
  for (int threads : {2, 3, 4, 7}) {
    std::vector<float> many(n * m);
    Gemm(x.data(), n, pw, nullptr, many.data(), threads);
    ASSERT_EQ(0, std::memcmp(one.data(), many.data(), one.size() * sizeof(float)))
        << threads << " threads";
  }
}

TEST(CpuGemmTest, PacksPanelsWithZeroPaddingAndParsesStorageNames) {
  auto w = Random(17 * 3, 11);
  const PackedWeight pw = PackedWeight::Pack(w.data(), 17, 3, DType::kF32);
  EXPECT_EQ(pw.panels(), 2);
  EXPECT_EQ(pw.bytes(), 2 * 3 * kPanelCols * 4);
  const float* p1 = static_cast<const float*>(pw.panel(1));
  EXPECT_EQ(p1[0], w[16 * 3 + 0]);  // row 16, column 0
  EXPECT_EQ(p1[kPanelCols + 0], w[16 * 3 + 1]);
  for (int64_t c = 1; c < kPanelCols; ++c) EXPECT_EQ(p1[c], 0.0f) << "padding column " << c;
  EXPECT_EQ(*ParseWeightStorage("bf16"), DType::kBF16);
  EXPECT_EQ(*ParseWeightStorage("f32"), DType::kF32);
  auto bad = ParseWeightStorage("q3_k");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("q3_k"), std::string::npos);
}

}  // namespace
}  // namespace tandem::kernels::cpu
