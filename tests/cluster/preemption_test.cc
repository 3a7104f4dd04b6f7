// On-demand KV pages through a real deployment (router + 1 prefill + 1 decode worker process on
// loopback, the default model): with the decode worker's pool sized for 4 long requests, 16 of
// them sent at once all complete — the decode worker preempts the youngest when its pages run
// out and they recompute and go on — with the single-process engine's tokens, and every page
// comes back. Decode pool tcp and shm (the prefill worker writes the prompt into the decode
// worker's pages), prefix cache on (the default) and off.
#include <cstdio>
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

constexpr int kPage = 16;      // the workers' default page size
constexpr int kRequests = 16;  // sent at once
constexpr int kPoolFor = 4;    // requests the decode pool holds at their full length

struct Case {
  const char* transport;     // the router's --kv-transport
  const char* prefix_cache;  // the decode worker's --prefix-cache
  int prompt_pages;          // pages of each prompt: 1 = every reservation fits at once
};

class ClusterPreemptionTest : public ::testing::TestWithParam<Case> {};

TEST_P(ClusterPreemptionTest, SixteenLongRequestsInAPoolForFourAllCompleteTokenExact) {
  const Case c = GetParam();
  Cluster cluster;
  // 20 MiB: 28 pages of the default model's f32 K/V (16 tokens × 30 layers × 2 × 3 heads × 64).
  // The router waits for pages as long as it takes (the guard is the call's own deadline).
  ASSERT_TRUE(cluster.Start(1, 1,
                            {"--kv-transport", c.transport, "--decode-room-wait-ms", "1200000"},
                            {"--kv-cache-mb", "20", "--prefix-cache", c.prefix_cache}));
  ClusterProcess& decode = *cluster.workers("decode")[0];
  const double pages = Metric(decode, "tandem_kv_pages_total");
  ASSERT_GE(pages, 2.0 * kPoolFor);
  // Each request at its full length takes a quarter of the pool. With 1-page prompts every
  // reservation fits at once and the pages of generated tokens run out; with 3-page prompts
  // the reservations alone outgrow the pool, so the router also waits for room.
  const int full_tokens = static_cast<int>(pages) / kPoolFor * kPage;
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < kRequests; ++i) {
    GenerationRequest r;
    const int len = (c.prompt_pages - 1) * kPage + 5 + i % 11;
    for (int t = 0; t < len; ++t) r.prompt.push_back(2 + (i * 977 + t * 131) % 20000);
    r.max_tokens = full_tokens - len;
    r.ignore_eos = true;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;
    r.sampling.seed = 500 + static_cast<uint64_t>(i);
    reqs.push_back(r);
  }
  const std::vector<Outcome> outs = GenerateAll(cluster.router().grpc, reqs);
  const auto want = Reference(reqs);
  for (int i = 0; i < kRequests; ++i) {
    EXPECT_TRUE(outs[i].status.ok()) << "request " << i << ": " << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, want[i]) << "request " << i;
  }
  const double preemptions = Metric(decode, "tandem_preemptions_total");
  EXPECT_GT(preemptions, 0) << "16 requests of a quarter of the pool each ran without a preemption";
  const double retries = Metric(cluster.router(), "tandem_retries_total");
  if (kRequests * c.prompt_pages > pages) {
    EXPECT_GT(retries, 0) << "the reservations outgrew the pool, yet the router never waited";
  }
  std::printf(
      "pool %.0f pages, %d requests of %d tokens (%d-page prompts): %.0f preemptions, "
      "%.0f reserve retries\n",
      pages, kRequests, full_tokens, c.prompt_pages, preemptions, retries);
  ExpectPagesReturnToZero(cluster.workers("prefill"));
  ExpectPagesReturnToZero(cluster.workers("decode"));
}

INSTANTIATE_TEST_SUITE_P(TransportsAndCache, ClusterPreemptionTest,
                         ::testing::Values(Case{"tcp", "true", 1}, Case{"shm", "false", 1},
                                           Case{"tcp", "true", 3}),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return std::string(c.transport) +
                                  (std::string(c.prefix_cache) == "true" ? "_cache" : "_nocache") +
                                  "_prompt" + std::to_string(c.prompt_pages) + "pages";
                         });

}  // namespace
}  // namespace tandem
