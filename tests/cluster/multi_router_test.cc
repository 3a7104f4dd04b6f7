// Several router replicas over one pool of workers, through real processes on loopback: two
// tandem-router processes, one prefill and two decode workers started with
// --router ROUTER_A,ROUTER_B. Both routers see every worker, and each one's index of the workers'
// prefix caches mirrors the caches (tandem_reported_cached_pages{worker} = the worker's
// tandem_kv_pages_cached), since every heartbeat round's changes go to both. The same greedy
// prompt gives the same tokens through either router (and as the single-process engine), and
// both routers send it to the same decode worker. One
// router restarts on its port with no memory of anything: the workers register with it again,
// its index fills from their full reports, and the other router never lost a worker.
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
using testing::Outcome;
using testing::WaitIndexMirrorsCaches;

void ExpectEveryWorker(const ClusterProcess& router) {
  EXPECT_EQ(Cluster::WaitMetric(router, "tandem_workers", 1, kWaitGuard, "kind=\"prefill\""), 1.0)
      << router.grpc;
  EXPECT_EQ(Cluster::WaitMetric(router, "tandem_workers", 2, kWaitGuard, "kind=\"decode\""), 2.0)
      << router.grpc;
}

TEST(ClusterMultiRouterTest, ReplicasShareTheWorkersAndTheirCacheReports) {
  const std::vector<int> ports = {FreePort(), FreePort()};
  ASSERT_GT(ports[0], 0);
  ASSERT_GT(ports[1], 0);
  ASSERT_NE(ports[0], ports[1]);
  Cluster cluster;
  cluster.SetRouters(2, ports);
  ASSERT_TRUE(cluster.Start(1, 2));
  const std::vector<ClusterProcess*> routers = cluster.routers();
  ASSERT_EQ(routers.size(), 2u);
  // A worker starts serving once one router accepted it; the other follows.
  for (const ClusterProcess* r : routers) ExpectEveryWorker(*r);

  // Greedy prompts of a few full pages each (so the caches hold something).
  std::mt19937 rng(77);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 3; ++i) {
    GenerationRequest r;
    for (int t = 0; t < 40 + 11 * i; ++t)
      r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
    r.max_tokens = 6;
    r.ignore_eos = true;
    r.sampling.temperature = 0.0f;
    reqs.push_back(r);
  }
  const std::vector<std::vector<int32_t>> want = testing::Reference(reqs);
  ASSERT_EQ(want.size(), reqs.size());
  // Each prompt through one router, then through the other: both choose the same decode
  // worker (the first one's choice was a tie broken in rendezvous order on the prompt's first
  // page; the second one breaks it alike, or follows the cache there).
  for (size_t i = 0; i < reqs.size(); ++i) {
    std::vector<std::string> chosen;
    for (size_t k = 0; k < routers.size(); ++k) {
      const ClusterProcess* r = routers[(i + k) % routers.size()];
      const std::vector<Outcome> out = GenerateAll(r->grpc, {reqs[i]});
      ASSERT_TRUE(out[0].status.ok()) << r->grpc << ": " << out[0].status.error_message();
      EXPECT_EQ(out[0].ids, want[i]) << "prompt " << i << " through " << r->grpc;
      ASSERT_TRUE(out[0].has_final);
      chosen.push_back(out[0].final.decode_worker());
    }
    EXPECT_EQ(chosen[0], chosen[1]) << "prompt " << i << ": the replicas chose alike";
  }
  for (const ClusterProcess* r : routers) {
    EXPECT_EQ(WaitIndexMirrorsCaches(cluster, *r), "") << "the index of " << r->grpc;
  }

  // The second router restarts on its port: the workers register with it again and send it
  // their whole caches; the first one keeps its workers and its index throughout.
  ASSERT_TRUE(Cluster::Restart(routers[1]));
  ExpectEveryWorker(*routers[1]);
  EXPECT_EQ(WaitIndexMirrorsCaches(cluster, *routers[1]), "") << "after the restart";
  EXPECT_EQ(WaitIndexMirrorsCaches(cluster, *routers[0]), "") << "the router that stayed";
  const std::vector<Outcome> again = GenerateAll(routers[1]->grpc, {reqs[0]});
  ASSERT_TRUE(again[0].status.ok()) << again[0].status.error_message();
  EXPECT_EQ(again[0].ids, want[0]);
  ExpectEveryWorker(*routers[0]);
}

}  // namespace
}  // namespace tandem
