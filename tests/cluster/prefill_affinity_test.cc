// Prefill worker choice by cache through a real deployment (router + 2 prefill + 1 decode worker
// processes on loopback, the default model): the router records which prefill worker computed
// each prompt, and a chat's next turn goes back to it (its prefix cache holds the previous
// prompt's pages) unless that worker is busier by more than the cached part. Every later turn
// then computes only what is new: the prefill workers' hit tokens equal the full pages of each
// chat's previous prompt. With the choice by queue alone, a turn lands on the other prefill
// worker about half the time and recomputes its chat's history.
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::ExpectPagesReturnToZero;
using testing::GenerateAll;
using testing::Metric;
using testing::Outcome;
using testing::Reference;

constexpr int kPage = 16;  // the workers' default page size

double HitTokens(const std::vector<ClusterProcess*>& prefill) {
  double sum = 0;
  for (const ClusterProcess* p : prefill) sum += Metric(*p, "tandem_prefix_cache_hit_tokens_total");
  return sum;
}

TEST(ClusterPrefillAffinityTest, EachChatsNextTurnIsPrefilledWhereItsHistoryIsCached) {
  constexpr int kChats = 3, kTurns = 3;
  Cluster cluster;
  ASSERT_TRUE(cluster.Start(2, 1));
  const std::vector<ClusterProcess*> prefill = cluster.workers("prefill");
  std::mt19937 rng(2323);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(2 + static_cast<int32_t>(rng() % 20000));
    return t;
  };
  const std::vector<int32_t> system = random_tokens(70);
  std::vector<std::vector<int32_t>> history(kChats, system);
  std::vector<size_t> previous_prompt(kChats, 0);
  std::vector<GenerationRequest> last_turn;
  std::vector<Outcome> last_outs;
  for (int turn = 0; turn < kTurns; ++turn) {
    SCOPED_TRACE(turn);
    std::vector<GenerationRequest> reqs;
    double want_hits = 0;
    for (int c = 0; c < kChats; ++c) {
      const std::vector<int32_t> user = random_tokens(11 + 3 * c + turn);
      history[c].insert(history[c].end(), user.begin(), user.end());
      GenerationRequest r;
      r.prompt = history[c];
      r.max_tokens = 7;
      r.ignore_eos = true;
      r.sampling.temperature = (c + turn) % 2 == 0 ? 0.0f : 0.8f;
      r.sampling.seed = 700 + static_cast<uint64_t>(10 * c + turn);
      // The prefill worker that computed the chat's previous prompt holds its full pages (the
      // answer it never saw is computed again); the last prompt token is always computed.
      want_hits += kPage * std::min(previous_prompt[c] / kPage, (r.prompt.size() - 1) / kPage);
      previous_prompt[c] = r.prompt.size();
      reqs.push_back(r);
    }
    const double hits0 = HitTokens(prefill);
    const std::vector<Outcome> outs = GenerateAll(cluster.router().grpc, reqs);
    const double hits = HitTokens(prefill) - hits0;
    for (int c = 0; c < kChats; ++c) {
      ASSERT_TRUE(outs[c].status.ok()) << "chat " << c << ": " << outs[c].status.error_message();
      history[c].insert(history[c].end(), outs[c].ids.begin(), outs[c].ids.end());
    }
    // Turn 1 shares only the system prompt, whose pages each prefill worker may or may not
    // hold depending on arrival order.
    if (turn > 0) {
      EXPECT_EQ(hits, want_hits) << "every chat went back to its prefill worker";
    }
    last_turn = reqs;
    last_outs = outs;
  }
  const auto want = Reference(last_turn);
  for (int c = 0; c < kChats; ++c) EXPECT_EQ(last_outs[c].ids, want[c]) << "chat " << c;
  ExpectPagesReturnToZero(prefill);
  ExpectPagesReturnToZero(cluster.workers("decode"));
}

}  // namespace
}  // namespace tandem
