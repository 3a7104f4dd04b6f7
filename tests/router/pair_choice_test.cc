// The router's choice of a new request's (prefill, decode) pair by estimated time to first
// token (WorkerPool::PickPair, tandem/router/pair_cost.h): the estimate itself, the rates it is
// made of, and the choices it leads to with registered workers.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/router/pair_cost.h"
#include "tandem/router/worker_pool.h"

namespace tandem {
namespace {

// SmolLM2-135M's KV layout: 30 layers, 3 KV heads of 64, f32, 16-token pages (a block is
// 30 * 2 * 16 * 3 * 64 * 4 = 737,280 bytes).
constexpr int64_t kBlockBytes = 737280;

v1::RegisterRequest Worker(const std::string& id, v1::WorkerRole role, int port,
                           const std::string& host, std::vector<std::string> transports) {
  v1::RegisterRequest r;
  r.set_worker_id(id);
  r.set_role(role);
  r.set_address("127.0.0.1:" + std::to_string(port));
  r.set_model("m");
  r.set_host_id(host);
  for (auto& t : transports) r.add_kv_transports(t);
  r.set_sends_from_first_block(true);
  auto* l = r.mutable_layout();
  l->set_dtype("f32");
  l->set_num_layers(30);
  l->set_num_kv_heads(3);
  l->set_head_dim(64);
  l->set_page_size(16);
  return r;
}

std::vector<int32_t> Prompt(int32_t n, int32_t seed = 0) {
  std::vector<int32_t> p(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = (i * 7 + seed * 131) % 49000 + 1;
  return p;
}

PairQuery Query(const std::vector<int32_t>& prompt) {
  PairQuery q;
  q.tokens = prompt;
  q.reserved_tokens = static_cast<int64_t>(prompt.size());
  q.ship_only_missing = true;
  return q;
}

TEST(PairCostTest, TransferAddsWhatTheComputeDidNotHide) {
  TtftInputs in;
  in.queued_tokens = 1000;
  in.compute_tokens = 500;
  in.tokens_per_second = 1000;
  in.num_layers = 10;
  in.ship_bytes = 1'000'000'000;
  // Compute-bound: 0.1 s of wire against 0.5 s of compute; only the last layer's share is left.
  in.bytes_per_second = 1e10;
  TtftEstimate e = EstimateTtft(in);
  EXPECT_DOUBLE_EQ(e.queue_seconds, 1.0);
  EXPECT_DOUBLE_EQ(e.compute_seconds, 0.5);
  EXPECT_DOUBLE_EQ(e.transfer_seconds, 0.01);
  // Transfer-bound: 10 s of wire, of which 0.45 s overlapped the compute.
  in.bytes_per_second = 1e8;
  e = EstimateTtft(in);
  EXPECT_DOUBLE_EQ(e.transfer_seconds, 10.0 - 0.45);
  EXPECT_DOUBLE_EQ(e.total(), 1.0 + 0.5 + 9.55);
  // Nothing to ship (the decode worker holds it all): no transfer time.
  in.ship_bytes = 0;
  EXPECT_DOUBLE_EQ(EstimateTtft(in).transfer_seconds, 0.0);
}

TEST(PairCostTest, RatesFallBackToThePairsTransportThenToDefaults) {
  TransferRates r;
  EXPECT_EQ(r.TokensPerSecond("p1"), TransferRates::kDefaultTokensPerSecond);
  EXPECT_GT(r.BytesPerSecond("p1", "d1", "shm"), r.BytesPerSecond("p1", "d1", "tcp"));
  r.ObservePrefill("p1", 600, 2.0);  // 300 tokens/s
  EXPECT_DOUBLE_EQ(r.TokensPerSecond("p1"), 300);
  EXPECT_DOUBLE_EQ(r.TokensPerSecond("p2"), 300);  // unmeasured: the others' mean
  r.ObservePrefill("p1", 1200, 2.0);               // moving average
  EXPECT_DOUBLE_EQ(r.TokensPerSecond("p1"), 0.7 * 300 + 0.3 * 600);
  r.ObservePrefill("p1", 0, 1.0);  // nothing computed (all cached): not a measurement
  r.ObservePrefill("p1", 10, 0.0);
  EXPECT_DOUBLE_EQ(r.TokensPerSecond("p1"), 390);

  r.ObserveTransfer("p1", "d1", "tcp", 100 << 20, 0.5);
  EXPECT_DOUBLE_EQ(r.BytesPerSecond("p1", "d1", "tcp"), (100 << 20) / 0.5);
  EXPECT_DOUBLE_EQ(r.BytesPerSecond("p2", "d2", "tcp"), (100 << 20) / 0.5);  // same transport
  EXPECT_EQ(r.BytesPerSecond("p2", "d2", "shm"), TransferRates::DefaultBytesPerSecond("shm"));
  r.ObserveTransfer("p1", "d1", "tcp", (4 << 20) - 1, 1e-3);  // too small to measure a link
  EXPECT_DOUBLE_EQ(r.BytesPerSecond("p1", "d1", "tcp"), (100 << 20) / 0.5);
  ASSERT_EQ(r.pair_rates().size(), 1u);
  EXPECT_EQ(r.pair_rates()[0].transport, "tcp");
}

// One prefill worker on host A; decode worker "near" on host A (shm), "far" on host B (tcp
// only). With equal load the pair over the faster link wins; a measured slow link loses by
// more; load still comes first.
TEST(PairChoiceTest, TheFasterLinkWinsAtEqualLoad) {
  WorkerPool pool(WorkerPoolOptions{});
  ASSERT_TRUE(pool.Register(Worker("p", v1::WORKER_ROLE_PREFILL, 1, "A", {"shm", "tcp"})).ok());
  ASSERT_TRUE(pool.Register(Worker("far", v1::WORKER_ROLE_DECODE, 2, "B", {"tcp"})).ok());
  ASSERT_TRUE(pool.Register(Worker("near", v1::WORKER_ROLE_DECODE, 3, "A", {"shm", "tcp"})).ok());
  const auto prompt = Prompt(1024);
  for (int i = 0; i < 3; ++i) {
    PairChoice c = pool.PickPair(Query(prompt));
    ASSERT_NE(c.prefill, nullptr);
    EXPECT_EQ(c.decode->id, "near") << i;
    EXPECT_EQ(c.transport, "shm");
  }
  // 1,024 tokens = 64 blocks; a 10 MB/s link takes 4.7 s for them, far beyond the compute.
  pool.rates().ObservePrefill("p", 2000, 1.0);
  pool.rates().ObserveTransfer("p", "far", "tcp", 10 << 20, 1.0);
  auto near = pool.PickPair(Query(prompt)).decode;
  ASSERT_EQ(near->id, "near");
  near->active.store(1);  // busier: the least busy decode worker is taken whatever its link
  PairChoice c = pool.PickPair(Query(prompt));
  EXPECT_EQ(c.decode->id, "far");
  EXPECT_EQ(c.transport, "tcp");
  const double ship = 64.0 * kBlockBytes / (10 << 20);
  EXPECT_NEAR(c.estimate.transfer_seconds, ship - c.estimate.compute_seconds * 29 / 30, 1e-9);
  EXPECT_NEAR(c.estimate.compute_seconds, 1024.0 / 2000, 1e-9);
}

// A decode worker holding most of the prompt ships less and may run up to kAffinitySlack more
// requests; a prefill worker holding the prefix computes less, unless its queue outweighs that.
TEST(PairChoiceTest, CachedPrefixesCountOnBothSides) {
  WorkerPool pool(WorkerPoolOptions{});
  for (const char* p : {"p1", "p2"}) {
    ASSERT_TRUE(pool.Register(Worker(p, v1::WORKER_ROLE_PREFILL, p[1], "A", {"tcp"})).ok());
  }
  for (const char* d : {"d1", "d2"}) {
    ASSERT_TRUE(pool.Register(Worker(d, v1::WORKER_ROLE_DECODE, 10 + d[1], "B", {"tcp"})).ok());
  }
  const auto prompt = Prompt(512);
  PairQuery q = Query(prompt);
  q.recorded_decode = {"d2", 480};
  q.recorded_prefill = {"p1", 480};
  PairChoice c = pool.PickPair(q);
  EXPECT_EQ(c.decode->id, "d2");
  EXPECT_EQ(c.decode_cached_tokens, 480);
  EXPECT_EQ(c.prefill->id, "p1");
  EXPECT_EQ(c.prefill_cached_tokens, 480);
  EXPECT_NEAR(c.estimate.compute_seconds, 32.0 / TransferRates::kDefaultTokensPerSecond, 1e-12);
  c.decode->active.store(WorkerPool::kAffinitySlack);  // at the slack: still taken
  EXPECT_EQ(pool.PickPair(q).decode->id, "d2");
  c.decode->active.store(WorkerPool::kAffinitySlack + 1);
  EXPECT_EQ(pool.PickPair(q).decode->id, "d1");
  c.prefill->queued_work.store(481);  // busier by more than its cache saves
  EXPECT_EQ(pool.PickPair(q).prefill->id, "p2");
  // A measured slow prefill worker loses even with equal queues and caches.
  c.prefill->queued_work.store(0);
  q.recorded_prefill = {};
  pool.rates().ObservePrefill("p1", 100, 1.0);
  pool.rates().ObservePrefill("p2", 1000, 1.0);
  EXPECT_EQ(pool.PickPair(q).prefill->id, "p2");
}

// Two routers that know the same workers (registered in another order) break ties alike for
// the same prompt, and different prompts still spread over the workers.
TEST(PairChoiceTest, ReplicasBreakTiesAlikeByThePromptsFirstPage) {
  WorkerPool a(WorkerPoolOptions{}), b(WorkerPoolOptions{});
  std::vector<v1::RegisterRequest> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(
        Worker("p" + std::to_string(i), v1::WORKER_ROLE_PREFILL, 20 + i, "A", {"tcp"}));
    workers.push_back(
        Worker("d" + std::to_string(i), v1::WORKER_ROLE_DECODE, 30 + i, "A", {"tcp"}));
  }
  for (const auto& w : workers) ASSERT_TRUE(a.Register(w).ok());
  std::reverse(workers.begin(), workers.end());
  for (const auto& w : workers) ASSERT_TRUE(b.Register(w).ok());
  std::set<std::string> prefills, decodes;
  for (int32_t seed = 0; seed < 24; ++seed) {
    const auto prompt = Prompt(64, seed);
    PairChoice x = a.PickPair(Query(prompt));
    PairChoice y = b.PickPair(Query(prompt));
    ASSERT_NE(x.prefill, nullptr);
    ASSERT_NE(y.prefill, nullptr);
    EXPECT_EQ(x.prefill->id, y.prefill->id) << seed;
    EXPECT_EQ(x.decode->id, y.decode->id) << seed;
    EXPECT_EQ(a.PickPair(Query(prompt)).decode->id, x.decode->id);  // stable
    prefills.insert(x.prefill->id);
    decodes.insert(x.decode->id);
  }
  EXPECT_EQ(prefills.size(), 3u);
  EXPECT_EQ(decodes.size(), 3u);
}

// A transport the router forces is the only one considered: a pair that lacks it is never
// chosen, and no pair at all leaves the prefill worker to StartPrefill (which names the error).
TEST(PairChoiceTest, AForcedTransportLimitsThePairs) {
  WorkerPool pool(WorkerPoolOptions{});
  ASSERT_TRUE(pool.Register(Worker("p", v1::WORKER_ROLE_PREFILL, 1, "A", {"shm", "tcp"})).ok());
  ASSERT_TRUE(pool.Register(Worker("far", v1::WORKER_ROLE_DECODE, 2, "B", {"tcp"})).ok());
  const auto prompt = Prompt(64);
  PairQuery q = Query(prompt);
  q.kv_transport = "shm";
  PairChoice c = pool.PickPair(q);
  ASSERT_NE(c.decode, nullptr);
  EXPECT_EQ(c.prefill, nullptr);
  ASSERT_TRUE(pool.Register(Worker("near", v1::WORKER_ROLE_DECODE, 3, "A", {"shm"})).ok());
  c = pool.PickPair(q);
  ASSERT_NE(c.prefill, nullptr);
  EXPECT_EQ(c.decode->id, "near");
  EXPECT_EQ(c.transport, "shm");
}

}  // namespace
}  // namespace tandem
