#include "../../../engine/src/sampling/token_filter.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "../../../engine/src/sampling/logits_processing.h"
#include "tandem/engine/sampling.h"

namespace tandem {
namespace {

using sampling_internal::FiltersEnabled;
using sampling_internal::FixedOrderSum;
using sampling_internal::SelectTokens;

std::vector<int32_t> Select(const std::vector<float>& w, int32_t top_k, float top_p, float min_p) {
  std::vector<int32_t> ids;
  const size_t kept = SelectTokens(w, FixedOrderSum(w), top_k, top_p, min_p, &ids);
  ids.resize(kept);
  return ids;
}

// Reference: full sort, then the documented rules one after another.
std::vector<int32_t> Reference(const std::vector<float>& w, int32_t top_k, float top_p,
                               float min_p) {
  std::vector<int32_t> ids(w.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return w[a] > w[b]; });
  float mass = FixedOrderSum(w);
  if (top_k > 0 && static_cast<size_t>(top_k) < w.size()) {
    ids.resize(top_k);
    mass = 0.0f;
    for (int32_t t : ids) mass += w[t];
  }
  if (top_p < 1.0f) {
    float cum = 0.0f;
    for (size_t j = 0; j < ids.size(); ++j) {
      cum += w[ids[j]];
      if (cum >= top_p * mass) {
        ids.resize(j + 1);
        break;
      }
    }
  }
  if (min_p > 0.0f) {
    while (ids.size() > 1 && w[ids.back()] < min_p) ids.pop_back();
  }
  return ids;
}

TEST(TokenFilterTest, Enabled) {
  EXPECT_FALSE(FiltersEnabled(0, 1.0f, 0.0f, 10));
  EXPECT_FALSE(FiltersEnabled(10, 1.0f, 0.0f, 10));  // top_k >= vocab keeps everything
  EXPECT_TRUE(FiltersEnabled(9, 1.0f, 0.0f, 10));
  EXPECT_TRUE(FiltersEnabled(0, 0.9f, 0.0f, 10));
  EXPECT_TRUE(FiltersEnabled(0, 1.0f, 0.1f, 10));
}

TEST(TokenFilterTest, TopKTiesByLowerId) {
  const std::vector<float> w = {0.5f, 1.0f, 0.5f, 0.25f, 0.5f};
  EXPECT_EQ(Select(w, 3, 1.0f, 0.0f), (std::vector<int32_t>{1, 0, 2}));
  EXPECT_EQ(Select(w, 1, 1.0f, 0.0f), (std::vector<int32_t>{1}));
}

TEST(TokenFilterTest, TopPMinimalPrefix) {
  const std::vector<float> w = {0.25f, 1.0f, 0.25f, 0.5f};             // total 2
  EXPECT_EQ(Select(w, 0, 0.75f, 0.0f), (std::vector<int32_t>{1, 3}));  // cum 1.5 >= 1.5
  EXPECT_EQ(Select(w, 0, 0.76f, 0.0f), (std::vector<int32_t>{1, 3, 0}));
  EXPECT_EQ(Select(w, 0, 0.01f, 0.0f), (std::vector<int32_t>{1}));  // at least one
  EXPECT_EQ(Select(w, 0, 0.99f, 0.0f), (std::vector<int32_t>{1, 3, 0, 2}));
}

TEST(TokenFilterTest, TopPRenormalizesOverTopK) {
  std::vector<float> w(100, 0.5f);
  for (int i = 0; i < 4; ++i) w[10 * i] = 1.0f;
  // Over the top 4 (mass 4) top_p = 0.5 needs 2 tokens; over all tokens it would need 4+.
  EXPECT_EQ(Select(w, 4, 0.5f, 0.0f), (std::vector<int32_t>{0, 10}));
}

TEST(TokenFilterTest, MinPDropsBelowFractionOfTop) {
  const std::vector<float> w = {0.05f, 1.0f, 0.1f, 0.5f, 0.09f};
  EXPECT_EQ(Select(w, 0, 1.0f, 0.1f), (std::vector<int32_t>{1, 3, 2}));
  EXPECT_EQ(Select(w, 0, 1.0f, 1.0f), (std::vector<int32_t>{1}));
  EXPECT_EQ(Select(w, 2, 1.0f, 0.1f), (std::vector<int32_t>{1, 3}));
}

TEST(TokenFilterTest, MatchesFullSortReferenceOnLargeVocab) {
  std::vector<float> w(20000);
  for (size_t i = 0; i < w.size(); ++i) {
    // Deterministic pseudo-random weights with many exact ties.
    w[i] = static_cast<float>((i * 2654435761u) % 997) / 996.0f;
  }
  w[1234] = 1.0f;
  for (int32_t top_k : {0, 1, 40, 5000}) {
    for (float top_p : {0.05f, 0.5f, 0.9f, 0.999f, 1.0f}) {
      for (float min_p : {0.0f, 0.3f}) {
        EXPECT_EQ(Select(w, top_k, top_p, min_p), Reference(w, top_k, top_p, min_p))
            << top_k << " " << top_p << " " << min_p;
      }
    }
  }
}

}  // namespace
}  // namespace tandem
