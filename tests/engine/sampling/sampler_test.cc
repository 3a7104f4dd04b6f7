#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "tandem/engine/sampling.h"

namespace tandem {
namespace {

SampleResult Draw(const std::vector<float>& logits, const SamplingParams& p, int64_t position) {
  return Sample(logits, p, {}, {}, position);
}

// Deterministic "random" logits in [-4, 4].
std::vector<float> MakeLogits(size_t n, uint64_t salt) {
  std::vector<float> l(n);
  for (size_t i = 0; i < n; ++i) l[i] = 8.0f * PhiloxUniform(salt, i, 7) - 4.0f;
  return l;
}

// Softmax of logits / temperature in double.
std::vector<double> Probs(const std::vector<float>& logits, double temperature = 1.0) {
  const double m = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double z = 0.0;
  for (size_t i = 0; i < p.size(); ++i) z += p[i] = std::exp((logits[i] - m) / temperature);
  for (double& v : p) v /= z;
  return p;
}

std::map<int32_t, int> Histogram(const std::vector<float>& logits, const SamplingParams& p,
                                 int draws) {
  std::map<int32_t, int> h;
  for (int pos = 0; pos < draws; ++pos) ++h[Draw(logits, p, pos).token];
  return h;
}

// Pearson chi-square of observed counts against expected probabilities over `support`
// (renormalized). Seeds are fixed, so this is deterministic; the bounds are loose.
double ChiSquare(const std::map<int32_t, int>& h, const std::vector<double>& probs,
                 const std::set<int32_t>& support, int draws) {
  double mass = 0.0;
  for (int32_t t : support) mass += probs[t];
  double chi2 = 0.0;
  for (int32_t t : support) {
    const double expected = draws * probs[t] / mass;
    const auto it = h.find(t);
    const double observed = it == h.end() ? 0.0 : it->second;
    chi2 += (observed - expected) * (observed - expected) / expected;
  }
  return chi2;
}

std::set<int32_t> Keys(const std::map<int32_t, int>& h) {
  std::set<int32_t> s;
  for (const auto& [t, c] : h) s.insert(t);
  return s;
}

TEST(SampleTest, SameSeedAndPositionSameTokenInAnyOrder) {
  const std::vector<float> logits = MakeLogits(1000, 1);
  const std::vector<float> other = MakeLogits(500, 2);
  SamplingParams p;
  p.seed = 99;
  SamplingParams q = p;
  q.top_k = 20;
  q.seed = 5;
  std::vector<int32_t> forward, backward(200);
  for (int pos = 0; pos < 200; ++pos) forward.push_back(Draw(logits, p, pos).token);
  for (int pos = 199; pos >= 0; --pos) {
    Draw(other, q, pos);  // unrelated calls in between must not matter
    backward[pos] = Draw(logits, p, pos).token;
  }
  EXPECT_EQ(forward, backward);
}

TEST(SampleTest, DifferentSeedsGiveDifferentStreams) {
  const std::vector<float> logits(1000, 0.0f);  // uniform: 1/1000 chance of agreeing
  SamplingParams a, b;
  a.seed = 1;
  b.seed = 2;
  int same = 0;
  for (int pos = 0; pos < 1000; ++pos)
    same += Draw(logits, a, pos).token == Draw(logits, b, pos).token;
  EXPECT_LT(same, 10);
  b.seed = a.seed + (1ull << 32);  // the seed's high half is part of the key
  same = 0;
  for (int pos = 0; pos < 1000; ++pos)
    same += Draw(logits, a, pos).token == Draw(logits, b, pos).token;
  EXPECT_LT(same, 10);
}

TEST(SampleTest, TemperatureZeroIsGreedyWithLowestIdOnTies) {
  std::vector<float> logits = MakeLogits(300, 3);
  logits[17] = 9.0f;
  logits[200] = 9.0f;
  SamplingParams p;
  p.temperature = 0.0f;
  for (int pos = 0; pos < 50; ++pos) EXPECT_EQ(Draw(logits, p, pos).token, 17);
}

TEST(SampleTest, TinyTemperatureEqualsGreedy) {
  std::vector<float> logits = MakeLogits(49152, 4);
  logits[31337] = 4.5f;
  SamplingParams greedy, tiny;
  greedy.temperature = 0.0f;
  tiny.temperature = 1e-6f;
  for (uint64_t seed = 0; seed < 5; ++seed) {
    tiny.seed = seed;
    for (int pos = 0; pos < 20; ++pos) {
      EXPECT_EQ(Draw(logits, tiny, pos).token, 31337);
      EXPECT_EQ(Draw(logits, greedy, pos).token, 31337);
    }
  }
}

TEST(SampleTest, TopKSupportIsExact) {
  const std::vector<float> logits = MakeLogits(64, 5);
  std::vector<int32_t> order(64);
  for (int i = 0; i < 64; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  SamplingParams p;
  p.top_k = 5;
  const auto h = Histogram(logits, p, 5000);
  EXPECT_EQ(Keys(h), std::set<int32_t>(order.begin(), order.begin() + 5));
  EXPECT_LT(ChiSquare(h, Probs(logits), Keys(h), 5000), 30.0);  // 4 dof
}

TEST(SampleTest, TopPSupportIsExact) {
  // Probabilities 0.4, 0.3, 0.2, 0.1 (from logs): top_p = 0.65 keeps {0.4, 0.3}.
  const std::vector<float> logits = {std::log(0.1f), std::log(0.3f), std::log(0.2f),
                                     std::log(0.4f)};
  SamplingParams p;
  p.top_p = 0.65f;
  auto h = Histogram(logits, p, 4000);
  EXPECT_EQ(Keys(h), (std::set<int32_t>{1, 3}));
  EXPECT_LT(ChiSquare(h, Probs(logits), Keys(h), 4000), 20.0);
  p.top_p = 0.75f;
  h = Histogram(logits, p, 4000);
  EXPECT_EQ(Keys(h), (std::set<int32_t>{1, 2, 3}));
  EXPECT_LT(ChiSquare(h, Probs(logits), Keys(h), 4000), 25.0);
}

TEST(SampleTest, MinPSupportIsExact) {
  const std::vector<float> logits = {0.0f, std::log(0.5f), std::log(0.2f), std::log(0.05f),
                                     std::log(0.11f)};
  SamplingParams p;
  p.min_p = 0.1f;
  const auto h = Histogram(logits, p, 4000);
  EXPECT_EQ(Keys(h), (std::set<int32_t>{0, 1, 2, 4}));
  EXPECT_LT(ChiSquare(h, Probs(logits), Keys(h), 4000), 25.0);
}

TEST(SampleTest, CombinedFiltersWithTemperatureMatchDistribution) {
  const std::vector<float> logits = MakeLogits(2000, 6);
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 12;
  p.top_p = 0.9f;
  p.seed = 2024;
  const std::vector<double> probs = Probs(logits, 0.7);
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return probs[a] > probs[b]; });
  double mass = 0.0, cum = 0.0;
  for (int j = 0; j < 12; ++j) mass += probs[order[j]];
  std::set<int32_t> allowed;
  for (int j = 0; j < 12 && cum < 0.9 * mass; ++j) {
    allowed.insert(order[j]);
    cum += probs[order[j]];
  }
  const auto h = Histogram(logits, p, 20000);
  EXPECT_EQ(Keys(h), allowed);
  EXPECT_LT(ChiSquare(h, probs, allowed, 20000), 3.0 * allowed.size() + 20.0);
}

TEST(SampleTest, UnfilteredMatchesDistribution) {
  const std::vector<float> logits = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f, -3.0f, 0.25f};
  SamplingParams p;
  p.seed = 77;
  const auto h = Histogram(logits, p, 40000);
  std::set<int32_t> all;
  for (int i = 0; i < 8; ++i) all.insert(i);
  EXPECT_EQ(Keys(h), all);
  EXPECT_LT(ChiSquare(h, Probs(logits), all, 40000), 30.0);  // 7 dof
}

TEST(SampleTest, PenaltiesSteerGreedy) {
  const std::vector<float> logits = {2.0f, 1.9f, 1.0f};
  const std::vector<int32_t> prompt = {0}, none = {}, gen = {0, 1};
  SamplingParams p;
  p.temperature = 0.0f;
  EXPECT_EQ(Sample(logits, p, prompt, none, 1).token, 0);
  p.repetition_penalty = 1.5f;  // 2.0 -> 1.33
  EXPECT_EQ(Sample(logits, p, prompt, none, 1).token, 1);
  p.frequency_penalty = 0.5f;  // 0: 2.0 / 1.5 - 0.5 = 0.83; 1: 1.9 / 1.5 - 0.5 = 0.77; 2: 1.0
  EXPECT_EQ(Sample(logits, p, prompt, gen, 3).token, 2);
}

TEST(SampleTest, LogprobsComeFromRawLogits) {
  const std::vector<float> logits = MakeLogits(5000, 8);
  const std::vector<double> probs = Probs(logits);
  SamplingParams p;
  p.temperature = 0.5f;
  p.repetition_penalty = 1.7f;
  p.presence_penalty = 1.0f;
  p.top_k = 3;
  p.top_logprobs = 5;
  const std::vector<int32_t> gen = {0, 1, 2, 3};
  for (int pos = 0; pos < 20; ++pos) {
    const SampleResult r = Sample(logits, p, {}, gen, pos);
    EXPECT_NEAR(r.logprob, std::log(probs[r.token]), 1e-4);
    ASSERT_EQ(r.top_logprobs.size(), 5u);
  }
  const SampleResult r = Sample(logits, p, {}, gen, 0);
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(r.top_logprobs[j].token, order[j]);
    EXPECT_NEAR(r.top_logprobs[j].logprob, std::log(probs[order[j]]), 1e-4);
  }
}

TEST(SampleTest, TopLogprobsTiesByLowerIdAndCappedAtVocab) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 2.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_logprobs = 4;
  SampleResult r = Draw(logits, p, 0);
  ASSERT_EQ(r.top_logprobs.size(), 4u);
  const int32_t expected[] = {1, 3, 2, 4};
  for (int j = 0; j < 4; ++j) EXPECT_EQ(r.top_logprobs[j].token, expected[j]);
  EXPECT_EQ(r.top_logprobs[0].logprob, r.top_logprobs[1].logprob);
  EXPECT_GT(r.top_logprobs[1].logprob, r.top_logprobs[2].logprob);
  EXPECT_EQ(r.logprob, r.top_logprobs[0].logprob);
  p.top_logprobs = 20;
  r = Draw(logits, p, 0);
  EXPECT_EQ(r.top_logprobs.size(), 5u);
  p.top_logprobs = 0;
  EXPECT_TRUE(Draw(logits, p, 0).top_logprobs.empty());
}

TEST(SampleTest, MaskedLogitsAreNeverSampled) {
  std::vector<float> logits(100, -INFINITY);
  logits[42] = 0.0f;
  logits[43] = 0.0f;
  SamplingParams p;
  for (int pos = 0; pos < 200; ++pos) {
    const int32_t t = Draw(logits, p, pos).token;
    EXPECT_TRUE(t == 42 || t == 43) << t;
  }
  p.top_p = 0.5f;
  for (int pos = 0; pos < 50; ++pos) EXPECT_EQ(Draw(logits, p, pos).token, 42);
}

// Pins the specification: if this changes, the GPU sampler and recorded outputs change too.
TEST(SampleTest, GoldenTokens) {
  std::vector<float> logits(16);
  for (int i = 0; i < 16; ++i) logits[i] = 0.1f * static_cast<float>(i);
  SamplingParams p;
  p.seed = 42;
  std::vector<int32_t> plain, filtered;
  for (int pos = 0; pos < 12; ++pos) plain.push_back(Draw(logits, p, pos).token);
  p.top_k = 8;
  p.top_p = 0.8f;
  p.temperature = 0.8f;
  for (int pos = 0; pos < 12; ++pos) filtered.push_back(Draw(logits, p, pos).token);
  EXPECT_EQ(plain, (std::vector<int32_t>{12, 15, 14, 13, 8, 8, 6, 8, 11, 7, 11, 8}));
  EXPECT_EQ(filtered, (std::vector<int32_t>{12, 10, 11, 12, 14, 14, 14, 14, 13, 14, 13, 14}));
}

TEST(SampleTest, SpeedOnDefaultVocab) {
  const std::vector<float> logits = MakeLogits(49152, 9);
  SamplingParams p;
  p.top_k = 50;
  p.top_p = 0.9f;
  p.top_logprobs = 5;
  p.repetition_penalty = 1.1f;
  const std::vector<int32_t> gen(200, 7);
  const auto start = std::chrono::steady_clock::now();
  constexpr int kCalls = 64;
  for (int pos = 0; pos < kCalls; ++pos) Sample(logits, p, gen, gen, pos);
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
      kCalls;
  RecordProperty("us_per_sample", static_cast<int>(us));
  std::printf("Sample() on 49152 tokens, top_k=50 top_p=0.9: %.0f us\n", us);
  p.top_k = 0;
  const auto start2 = std::chrono::steady_clock::now();
  for (int pos = 0; pos < kCalls; ++pos) Sample(logits, p, gen, gen, pos);
  const double us2 =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start2).count() /
      kCalls;
  std::printf("Sample() on 49152 tokens, top_p=0.9 only: %.0f us\n", us2);
}

}  // namespace
}  // namespace tandem
