// Philox4x32-10 known-answer vectors (Random123 kat_vectors) and the PhiloxUniform mapping.
#include "../../../engine/src/sampling/philox.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "tandem/engine/sampling.h"

namespace tandem {
namespace {

using sampling_internal::Philox4x32x10;
using sampling_internal::PhiloxCounter;
using sampling_internal::PhiloxKey;

TEST(PhiloxTest, KnownAnswerZeros) {
  EXPECT_EQ(Philox4x32x10({0, 0, 0, 0}, {0, 0}),
            (PhiloxCounter{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
}

TEST(PhiloxTest, KnownAnswerOnes) {
  EXPECT_EQ(
      Philox4x32x10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
      (PhiloxCounter{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
}

TEST(PhiloxTest, KnownAnswerPi) {
  EXPECT_EQ(
      Philox4x32x10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
      (PhiloxCounter{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

// PhiloxUniform(seed, counter, lane) = (word 0 of Philox(ctr, key) >> 8) * 2^-24 with
// key = {seed lo, seed hi}, ctr = {counter lo, counter hi, lane, 0}.
TEST(PhiloxTest, UniformUsesDocumentedCounterLayout) {
  const uint64_t seeds[] = {0, 1, 0x0123456789abcdefull, ~0ull};
  const uint64_t counters[] = {0, 7, 0xfedcba9876543210ull, ~0ull};
  for (uint64_t seed : seeds) {
    for (uint64_t counter : counters) {
      for (uint32_t lane : {0u, 1u, 0xffffffffu}) {
        const PhiloxCounter out = Philox4x32x10(
            {static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), lane, 0},
            PhiloxKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
        const double expected = static_cast<double>(out[0] >> 8) / 16777216.0;
        EXPECT_EQ(PhiloxUniform(seed, counter, lane), static_cast<float>(expected));
      }
    }
  }
}

TEST(PhiloxTest, UniformGoldenValues) {
  // Word 0 of the all-zero KAT is 0x6627e8d5: (0x6627e8d5 >> 8) / 2^24.
  EXPECT_EQ(PhiloxUniform(0, 0, 0), static_cast<float>(0x6627e8) / 16777216.0f);
  // Word 0 of the all-ones KAT is 0x408f276d; lane is ctr[2], ctr[3] stays 0, so this
  // differs from the KAT unless computed with the same layout:
  const PhiloxCounter ones = Philox4x32x10({0xffffffff, 0xffffffff, 0xffffffff, 0}, {~0u, ~0u});
  EXPECT_EQ(PhiloxUniform(~0ull, ~0ull, 0xffffffffu),
            static_cast<float>(ones[0] >> 8) / 16777216.0f);
}

TEST(PhiloxTest, UniformInRangeReproducibleAndRoughlyUniform) {
  constexpr int kDraws = 200000;
  double sum = 0.0;
  int buckets[10] = {};
  for (int i = 0; i < kDraws; ++i) {
    const float u = PhiloxUniform(12345, static_cast<uint64_t>(i), 0);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ASSERT_EQ(u, PhiloxUniform(12345, static_cast<uint64_t>(i), 0));
    sum += u;
    ++buckets[static_cast<int>(u * 10.0f)];
  }
  EXPECT_NEAR(sum / kDraws, 0.5, 0.005);
  for (int b : buckets) EXPECT_NEAR(b, kDraws / 10, kDraws / 100);
}

TEST(PhiloxTest, SeedsCountersAndLanesGiveDifferentNumbers) {
  EXPECT_NE(PhiloxUniform(1, 0, 0), PhiloxUniform(2, 0, 0));
  EXPECT_NE(PhiloxUniform(1, 0, 0), PhiloxUniform(1, 1, 0));
  EXPECT_NE(PhiloxUniform(1, 0, 0), PhiloxUniform(1, 0, 1));
  EXPECT_NE(PhiloxUniform(1ull << 32, 0, 0), PhiloxUniform(0, 0, 0));  // seed high half counts
  EXPECT_NE(PhiloxUniform(0, 1ull << 32, 0), PhiloxUniform(0, 0, 0));  // counter high half
}

}  // namespace
}  // namespace tandem
