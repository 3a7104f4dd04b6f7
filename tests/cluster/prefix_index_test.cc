// Cache-aware routing from the workers' own account, through a real deployment (router, prefill
// and decode worker processes on loopback): workers report the prefix-cache pages they add and
// evict in their heartbeats, and the router's index mirrors every worker's cache
// (tandem_reported_cached_pages{worker} = the worker's tandem_kv_pages_cached). One prefill
// worker computes four chats' first turns, a second one joins, and the router restarts with no
// record of where it sent anything; once the workers registered again (sending their whole
// cache), each chat's next turn still goes to the worker holding its history: the prefill
// workers' hit tokens equal the full pages of each chat's previous prompt. Without the index
// the restarted router alternates between the idle workers and half of the turns recompute.
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::FreePort;
using testing::GenerateAll;
using testing::kWaitGuard;
using testing::Metric;
using testing::Outcome;
using testing::WaitIndexMirrorsCaches;

constexpr int kPage = 16;  // the workers' default page size

double HitTokens(const std::vector<ClusterProcess*>& prefill) {
  double sum = 0;
  for (const ClusterProcess* p : prefill) sum += Metric(*p, "tandem_prefix_cache_hit_tokens_total");
  return sum;
}

TEST(ClusterPrefixIndexTest, ARestartedRouterRoutesByTheWorkersReportedCaches) {
  constexpr int kChats = 4;
  const int port = FreePort();
  ASSERT_GT(port, 0);
  Cluster cluster;
  // One prefill worker computes every chat's first turn; a second one joins before the second.
  ASSERT_TRUE(cluster.Start(1, 1, {"--port", std::to_string(port)}));
  std::mt19937 rng(4242);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(2 + static_cast<int32_t>(rng() % 20000));
    return t;
  };
  std::vector<std::vector<int32_t>> history;
  for (int c = 0; c < kChats; ++c) history.push_back(random_tokens(40 + 9 * c));
  std::vector<size_t> previous_prompt(kChats, 0);
  // One turn of every chat, one request at a time; `want_hits` gains the full pages of each
  // chat's previous prompt (the prefill worker never saw the answer).
  auto turn = [&](int t, double* want_hits) {
    for (int c = 0; c < kChats; ++c) {
      const std::vector<int32_t> user = random_tokens(7 + c);
      history[c].insert(history[c].end(), user.begin(), user.end());
      GenerationRequest r;
      r.prompt = history[c];
      r.max_tokens = 5;
      r.ignore_eos = true;
      r.sampling.seed = 900 + static_cast<uint64_t>(10 * c + t);
      *want_hits += kPage * std::min(previous_prompt[c] / kPage, (r.prompt.size() - 1) / kPage);
      previous_prompt[c] = r.prompt.size();
      const std::vector<Outcome> out = GenerateAll(cluster.router().grpc, {r});
      ASSERT_TRUE(out[0].status.ok()) << "chat " << c << ": " << out[0].status.error_message();
      history[c].insert(history[c].end(), out[0].ids.begin(), out[0].ids.end());
      std::printf("turn %d chat %d: prompt %zu tokens prefilled on %s\n", t, c, r.prompt.size(),
                  out[0].final.prefill_worker().c_str());
    }
  };
  double unused = 0;
  turn(0, &unused);
  ASSERT_NE(cluster.AddWorker("prefill", 1), nullptr);
  EXPECT_EQ(WaitIndexMirrorsCaches(cluster, cluster.router()), "")
      << "the router's index before the restart";

  // The router restarts on the same port: no record of where it routed anything.
  ASSERT_TRUE(Cluster::Restart(&cluster.router()));
  ASSERT_EQ(
      Cluster::WaitMetric(cluster.router(), "tandem_workers", 2, kWaitGuard, "kind=\"prefill\""),
      2.0);
  ASSERT_EQ(
      Cluster::WaitMetric(cluster.router(), "tandem_workers", 1, kWaitGuard, "kind=\"decode\""),
      1.0);
  EXPECT_EQ(WaitIndexMirrorsCaches(cluster, cluster.router()), "")
      << "the index after the workers registered again";

  // Idle workers, one request at a time: by queue alone the two would take turns and the new
  // one, which holds nothing, would recompute half of the histories.
  const std::vector<ClusterProcess*> prefill = cluster.workers("prefill");
  double want_hits = 0;
  const double hits0 = HitTokens(prefill);
  turn(1, &want_hits);
  EXPECT_GT(want_hits, 0);
  EXPECT_EQ(HitTokens(prefill) - hits0, want_hits) << "every chat went back to its prefill worker";
}

}  // namespace
}  // namespace tandem
