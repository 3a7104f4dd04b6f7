// The prefill worker's prefix cache through a real deployment (router + 1 prefill + 1 decode
// worker processes on loopback): the same request gives the single-process tokens with the
// cache cold and warm, requests sharing a system prompt hit it (read from the prefill worker's
// /metrics), and pages in use return to zero while the cached pages stay cached.
#include <chrono>
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
using testing::Generate;
using testing::GenerateAll;
using testing::kWaitGuard;
using testing::Metric;
using testing::Outcome;
using testing::Reference;
using testing::ToProto;

TEST(ClusterPrefixCacheTest, ColdAndWarmGiveSingleProcessTokensAndTheHitIsCounted) {
  Cluster cluster;
  ASSERT_TRUE(cluster.Start(1, 1));
  ClusterProcess& prefill = *cluster.workers("prefill")[0];

  // A 100-token "system prompt" (six full pages of 16) shared by every request.
  std::mt19937 rng(16);
  std::vector<int32_t> system;
  for (int t = 0; t < 100; ++t) system.push_back(2 + static_cast<int32_t>(rng() % 20000));
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 5; ++i) {
    GenerationRequest r;
    r.prompt = system;
    for (int t = 0, n = 3 + i * 7; t < n; ++t) {
      r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
    }
    r.max_tokens = 6;
    r.ignore_eos = true;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;
    r.sampling.seed = 500 + static_cast<uint64_t>(i);
    reqs.push_back(r);
  }
  const auto want = Reference(reqs);
  ASSERT_EQ(want.size(), reqs.size());

  // Cold: nothing cached yet.
  const Outcome cold = Generate(cluster.router().grpc, ToProto(reqs[0]));
  ASSERT_TRUE(cold.status.ok()) << cold.status.error_message();
  EXPECT_EQ(cold.ids, want[0]);
  EXPECT_EQ(Metric(prefill, "tandem_prefix_cache_hit_tokens_total"), 0);
  EXPECT_EQ(Metric(prefill, "tandem_prefix_cache_lookup_tokens_total"), reqs[0].prompt.size());

  // Warm: the same request hits the six full pages of its 103-token prompt.
  const Outcome warm = Generate(cluster.router().grpc, ToProto(reqs[0]));
  ASSERT_TRUE(warm.status.ok()) << warm.status.error_message();
  EXPECT_EQ(warm.ids, want[0]);
  EXPECT_EQ(Metric(prefill, "tandem_prefix_cache_hit_tokens_total"), 96);

  // The other requests share the system prompt, all at once: each hits its six pages.
  std::vector<GenerationRequest> rest(reqs.begin() + 1, reqs.end());
  const auto outs = GenerateAll(cluster.router().grpc, rest);
  for (size_t i = 0; i < rest.size(); ++i) {
    SCOPED_TRACE(i + 1);
    ASSERT_TRUE(outs[i].status.ok()) << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, want[i + 1]);
  }
  EXPECT_EQ(Metric(prefill, "tandem_prefix_cache_hit_tokens_total"), 96 + 96 * 4.0);
  EXPECT_GE(Metric(prefill, "tandem_kv_pages_cached"), 6);

  ExpectPagesReturnToZero(cluster.workers("prefill"));
  ExpectPagesReturnToZero(cluster.workers("decode"));
  EXPECT_GE(Metric(prefill, "tandem_kv_pages_cached"), 6) << "cached pages stay cached";
}

}  // namespace
}  // namespace tandem
