#include "../../../engine/src/sampling/logits_processing.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace tandem {
namespace {

using sampling_internal::ApplyPenalties;
using sampling_internal::Argmax;
using sampling_internal::FixedOrderSum;

TEST(PenaltiesTest, DisabledLeavesLogitsAlone) {
  std::vector<float> l = {1.0f, -2.0f, 3.0f};
  const std::vector<int32_t> prompt = {0, 1}, gen = {2, 2};
  EXPECT_FALSE(ApplyPenalties(l, SamplingParams(), prompt, gen));
  EXPECT_EQ(l, (std::vector<float>{1.0f, -2.0f, 3.0f}));
}

TEST(PenaltiesTest, RepetitionPenaltyOncePerDistinctToken) {
  std::vector<float> l = {2.0f, -2.0f, 0.0f, 1.0f, 3.0f};
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {0, 1, 1}, gen = {1, 2, 0};
  EXPECT_TRUE(ApplyPenalties(l, p, prompt, gen));
  EXPECT_EQ(l, (std::vector<float>{1.0f, -4.0f, 0.0f, 1.0f, 3.0f}));
}

TEST(PenaltiesTest, RepetitionPenaltyBelowOneRewards) {
  std::vector<float> l = {3.0f, -3.0f};
  SamplingParams p;
  p.repetition_penalty = 0.5f;
  const std::vector<int32_t> gen = {0, 1};
  ApplyPenalties(l, p, {}, gen);
  EXPECT_EQ(l, (std::vector<float>{6.0f, -1.5f}));
}

TEST(PenaltiesTest, PresenceAndFrequencyOverGeneratedOnly) {
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  SamplingParams p;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  const std::vector<int32_t> prompt = {0, 0, 0}, gen = {3, 1, 3, 3};
  ApplyPenalties(l, p, prompt, gen);
  // token 3: c = 3 -> 1 - (0.5 + 0.75); token 1: c = 1 -> 1 - (0.5 + 0.25); 0 is prompt only.
  EXPECT_EQ(l, (std::vector<float>{1.0f, 0.25f, 1.0f, -0.25f}));
}

TEST(PenaltiesTest, ExactFormulaOnArbitraryValues) {
  std::vector<float> l = {0.3f, -1.7f, 2.9f, 0.11f, -0.01f};
  const std::vector<float> raw = l;
  SamplingParams p;
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.7f;
  p.frequency_penalty = -0.35f;
  const std::vector<int32_t> prompt = {0, 4}, gen = {1, 2, 2, 4, 2};
  ApplyPenalties(l, p, prompt, gen);
  auto rep = [&](float x) { return x > 0.0f ? x / 1.3f : x * 1.3f; };
  auto pf = [&](float x, int c) { return x - (0.7f + -0.35f * static_cast<float>(c)); };
  EXPECT_EQ(l[0], rep(raw[0]));
  EXPECT_EQ(l[1], pf(rep(raw[1]), 1));
  EXPECT_EQ(l[2], pf(rep(raw[2]), 3));
  EXPECT_EQ(l[3], raw[3]);
  EXPECT_EQ(l[4], pf(rep(raw[4]), 1));
}

TEST(PenaltiesTest, OutOfRangeIdsIgnoredAndScratchReset) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 1.0f;
  const std::vector<int32_t> prompt = {-1, 7}, gen = {1, 100, 1};
  for (int round = 0; round < 3; ++round) {  // thread-local scratch must come back clean
    std::vector<float> l = {4.0f, 4.0f, 4.0f};
    ApplyPenalties(l, p, prompt, gen);
    EXPECT_EQ(l, (std::vector<float>{4.0f, 0.0f, 4.0f}));
  }
}

TEST(FixedOrderSumTest, StridedPartialsThenLeftToRight) {
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 1.0f / static_cast<float>(i + 1);
  float partial[32] = {};
  for (size_t i = 0; i < x.size(); ++i) partial[i % 32] += x[i];
  float total = 0.0f;
  for (float v : partial) total += v;
  EXPECT_EQ(FixedOrderSum(x), total);
  EXPECT_EQ(FixedOrderSum(std::vector<float>{1.0f, 2.0f, 3.0f}), 6.0f);
}

TEST(ArgmaxTest, LowestIdOnTiesAndNanNeverWins) {
  EXPECT_EQ(Argmax(std::vector<float>{1.0f, 3.0f, 3.0f, 2.0f}), 1);
  EXPECT_EQ(Argmax(std::vector<float>{NAN, 1.0f, NAN, 5.0f}), 3);
  EXPECT_EQ(Argmax(std::vector<float>{-INFINITY, -INFINITY}), 0);
}

}  // namespace
}  // namespace tandem
