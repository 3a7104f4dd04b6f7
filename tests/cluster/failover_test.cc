// Failover through real processes: a decode worker SIGKILLed or SIGSTOPped under N streams, a
// prefill worker lost mid-prefill, failovers that cannot succeed, and a short chaos run (workers
// killed and restarted under 64 concurrent streams). Every stream that completes must carry the
// single-process engine's tokens; pages on every live worker return to zero.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>

#include "cluster_requests.h"

namespace tandem {
namespace {

using testing::Cluster;
using testing::ClusterProcess;
using testing::ExpectPagesReturnToZero;
using testing::Generate;
using testing::kCallGuard;
using testing::kWaitGuard;
using testing::MetricOr;
using testing::Outcome;
using testing::PollForProcess;
using testing::Reference;
using testing::ToProto;

// Streams `reqs` at once, one thread each; `Until` blocks until every stream has at least `n`
// tokens (or ended). Records per stream the longest gap between two chunks (its worst stall).
class Streams {
 public:
  Streams(const std::string& router, const std::vector<GenerationRequest>& reqs)
      : out_(reqs.size()),
        count_(reqs.size(), 0),
        ended_(reqs.size(), false),
        max_gap_(reqs.size(), 0.0) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      threads_.emplace_back([this, router, req = ToProto(reqs[i]), i] {
        std::optional<std::chrono::steady_clock::time_point> last;  // from the first token on
        Outcome o = Generate(router, req, kCallGuard, 0, [&](size_t n) {
          const auto now = std::chrono::steady_clock::now();
          std::lock_guard<std::mutex> lock(mu_);
          if (last) {
            max_gap_[i] = std::max(max_gap_[i], std::chrono::duration<double>(now - *last).count());
          }
          last = now;
          total_ += n - count_[i];
          count_[i] = n;
          cv_.notify_all();
        });
        std::lock_guard<std::mutex> lock(mu_);
        out_[i] = std::move(o);
        ended_[i] = true;
        cv_.notify_all();
      });
    }
  }
  ~Streams() { Join(); }

  // Every stream has `n` tokens or has ended. Bounded by kCallGuard (a hang guard).
  void Until(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kCallGuard, [&] {
      for (size_t i = 0; i < count_.size(); ++i) {
        if (!ended_[i] && count_[i] < n) return false;
      }
      return true;
    });
  }
  // All streams together received `n` tokens, or all ended; false when all ended first.
  bool UntilTotal(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kCallGuard, [&] {
      return total_ >= n || std::all_of(ended_.begin(), ended_.end(), [](bool e) { return e; });
    });
    return total_ >= n;
  }
  bool AnyEnded() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::any_of(ended_.begin(), ended_.end(), [](bool e) { return e; });
  }
  std::vector<Outcome>& Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
    return out_;
  }
  std::vector<double> max_gaps() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_gap_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Outcome> out_;
  std::vector<size_t> count_;
  std::vector<bool> ended_;
  std::vector<double> max_gap_;
  size_t total_ = 0;
  std::vector<std::thread> threads_;
};

// `n` requests with short prompts that run to max_tokens (ignore_eos): greedy and seeded
// sampling alternate (seeded ones also with top_k / top_p and penalties).
std::vector<GenerationRequest> RunToLength(int n, uint32_t seed, int max_tokens) {
  std::mt19937 rng(seed);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    const int len = 4 + static_cast<int>(rng() % 28);
    for (int t = 0; t < len; ++t) r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;
    r.sampling.top_k = i % 4 == 1 ? 40 : 0;
    r.sampling.top_p = i % 4 == 3 ? 0.9f : 1.0f;
    r.sampling.seed = 7000 + static_cast<uint64_t>(i);
    reqs.push_back(r);
  }
  return reqs;
}

double RouterMetric(Cluster& c, const std::string& metric, const std::string& filter = "") {
  return MetricOr(c.router(), metric, -1, filter);
}

// The decode worker holding every stream is lost mid-generation (SIGKILL: its connections
// reset; SIGSTOP: frozen, found by its missing heartbeats). No other decode worker exists
// until then: the streams wait for one to join, then continue there.
class DecodeFailoverTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(DecodeFailoverTest, EveryStreamCompletesWithTheSingleProcessTokens) {
  const auto [sig, n] = GetParam();
  Cluster c;
  ASSERT_TRUE(c.Start(1, 1, {"--failover-wait-ms", "600000"}));
  ClusterProcess* victim = c.workers("decode")[0];
  const auto reqs = RunToLength(n, 11 + n, 64);
  Streams streams(c.router().grpc, reqs);
  streams.Until(2);  // every stream is decoding on the victim
  ASSERT_FALSE(streams.AnyEnded()) << "a stream ended before the worker was lost";
  kill(victim->pid, sig);
  ClusterProcess* fresh = c.AddWorker("decode", 1);
  ASSERT_NE(fresh, nullptr);
  auto& outs = streams.Join();
  const auto want = Reference(reqs);
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(outs[i].status.ok()) << "stream " << i << ": " << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, want[i]) << "stream " << i;
    ASSERT_TRUE(outs[i].has_final);
    EXPECT_EQ(outs[i].final.failovers(), 1) << "stream " << i;
    EXPECT_EQ(outs[i].final.decode_worker(), fresh->grpc) << "stream " << i;
  }
  EXPECT_EQ(RouterMetric(c, "tandem_failovers_total", "phase=\"decode\""), n);
  std::vector<ClusterProcess*> live = {c.workers("prefill")[0], fresh};
  if (sig == SIGSTOP) {  // thawed, the frozen worker finds its streams cancelled and frees them
    kill(victim->pid, SIGCONT);
    live.push_back(victim);
  }
  ExpectPagesReturnToZero(live);
}

INSTANTIATE_TEST_SUITE_P(Lost, DecodeFailoverTest,
                         ::testing::Values(std::make_tuple(SIGKILL, 1),
                                           std::make_tuple(SIGKILL, 16),
                                           std::make_tuple(SIGSTOP, 16)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == SIGKILL ? "Killed"
                                                                                 : "Frozen") +
                                  "Under" + std::to_string(std::get<1>(info.param)) + "Streams";
                         });

// A prefill worker frozen, then killed, while it computes a long prompt: the request moves to
// the other prefill worker before any token was sent.
TEST(FailoverTest, PrefillWorkerLostMidPrefillMovesTheRequestToAnother) {
  Cluster c;
  ASSERT_TRUE(c.Start(2, 1));
  std::vector<GenerationRequest> reqs = RunToLength(1, 5, 8);
  reqs[0].prompt.clear();
  for (int t = 0; t < 1500; ++t) reqs[0].prompt.push_back(100 + (t * 37) % 15000);
  Streams streams(c.router().grpc, reqs);
  ClusterProcess* busy = PollForProcess([&] {
    ClusterProcess* found = nullptr;
    for (ClusterProcess* p : c.workers("prefill")) {
      if (MetricOr(*p, "tandem_requests_running", 0) >= 1) found = p;
    }
    return found;
  });
  ASSERT_NE(busy, nullptr) << "no prefill worker took the prompt";
  kill(busy->pid, SIGSTOP);
  ASSERT_FALSE(streams.AnyEnded()) << "the prompt was prefilled before the worker froze";
  Cluster::Kill(busy);
  auto& outs = streams.Join();
  ASSERT_TRUE(outs[0].status.ok()) << outs[0].status.error_message();
  EXPECT_EQ(outs[0].ids, Reference(reqs)[0]);
  EXPECT_EQ(outs[0].final.failovers(), 1);
  EXPECT_NE(outs[0].final.prefill_worker(), busy->grpc);
  EXPECT_EQ(RouterMetric(c, "tandem_failovers_total", "phase=\"prefill\""), 1);
  std::vector<ClusterProcess*> live = c.workers("decode");
  for (ClusterProcess* p : c.workers("prefill")) {
    if (p != busy) live.push_back(p);
  }
  ExpectPagesReturnToZero(live);
}

// The decode worker that holds the reservation is lost while the only prefill worker computes
// the prompt: SIGKILL (the router sees its registration end and cancels the prefill) or
// SIGSTOP (the prefill worker's transfer times out and it answers ERROR_ORIGIN_PEER). Either
// way the KV receiver failed, not the prefill worker: the request moves to the other decode
// worker and is prefilled again on the same prefill worker (were it blamed, no prefill worker
// would be left: the request would wait for one, then fail).
class KvReceiverLostTest : public ::testing::TestWithParam<int> {};

TEST_P(KvReceiverLostTest, MidPrefillKeepsThePrefillWorker) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 2));
  std::vector<GenerationRequest> reqs = RunToLength(1, 6, 8);
  reqs[0].prompt.clear();
  for (int t = 0; t < 1500; ++t) reqs[0].prompt.push_back(100 + (t * 53) % 15000);
  Streams streams(c.router().grpc, reqs);
  ClusterProcess* prefill = c.workers("prefill")[0];
  ClusterProcess* receiver = PollForProcess([&] {
    ClusterProcess* found = nullptr;
    if (MetricOr(*prefill, "tandem_requests_running", 0) >= 1) {
      for (ClusterProcess* d : c.workers("decode")) {
        if (MetricOr(*d, "tandem_kv_pages_used", 0) > 0) found = d;
      }
    }
    return found;
  });
  ASSERT_NE(receiver, nullptr) << "no decode worker reserved pages while the prompt was prefilled";
  const std::string receiver_address = receiver->grpc;
  kill(receiver->pid, GetParam());
  auto& outs = streams.Join();
  Cluster::Kill(receiver);
  ASSERT_TRUE(outs[0].status.ok()) << outs[0].status.error_message();
  EXPECT_EQ(outs[0].ids, Reference(reqs)[0]);
  EXPECT_EQ(outs[0].final.failovers(), 1);
  EXPECT_EQ(outs[0].final.prefill_worker(), prefill->grpc);
  EXPECT_NE(outs[0].final.decode_worker(), receiver_address);
  EXPECT_EQ(RouterMetric(c, "tandem_failovers_total", "phase=\"prefill\""), 1);
  std::vector<ClusterProcess*> live = {prefill};
  for (ClusterProcess* d : c.workers("decode")) {
    if (d != receiver) live.push_back(d);
  }
  ExpectPagesReturnToZero(live);
}

INSTANTIATE_TEST_SUITE_P(Lost, KvReceiverLostTest, ::testing::Values(SIGKILL, SIGSTOP),
                         [](const auto& info) {
                           return std::string(info.param == SIGKILL ? "Killed" : "Frozen");
                         });

// No failover left (budget 0) or no worker joins within the wait: UNAVAILABLE naming the
// failed worker and why the request could not move; never a hang.
TEST(FailoverTest, AFailoverThatCannotSucceedEndsWithUnavailableNamingTheCause) {
  for (const bool budget : {true, false}) {
    SCOPED_TRACE(budget ? "budget 0" : "no worker joins");
    Cluster c;
    ASSERT_TRUE(c.Start(1, 1,
                        budget ? std::vector<std::string>{"--max-failovers", "0"}
                               : std::vector<std::string>{"--failover-wait-ms", "300"}));
    ClusterProcess* victim = c.workers("decode")[0];
    Streams streams(c.router().grpc, RunToLength(1, 3, 200));
    streams.Until(2);
    Cluster::Kill(victim);
    auto& outs = streams.Join();
    EXPECT_EQ(outs[0].status.error_code(), grpc::StatusCode::UNAVAILABLE);
    const std::string msg = outs[0].status.error_message();
    EXPECT_NE(msg.find(victim->grpc), std::string::npos) << msg;
    EXPECT_NE(msg.find(budget ? "failover budget (0) is spent" : "no decode worker joined"),
              std::string::npos)
        << msg;
    ExpectPagesReturnToZero(c.workers("prefill"));
  }
}

// The router is lost mid-stream: the client's stream ends UNAVAILABLE (no hang); the workers
// free the stream's pages (its connections reset); a router restarted on the same port gets
// its workers back through their heartbeats and serves token-exact again.
TEST(FailoverTest, RouterLostMidStreamEndsUnavailableAndWorkersRejoinARestartedRouter) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 1));
  const auto reqs = RunToLength(1, 21, 400);
  {
    Streams streams(c.router().grpc, reqs);
    streams.Until(2);
    Cluster::Kill(&c.router());
    auto& outs = streams.Join();
    EXPECT_EQ(outs[0].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << outs[0].status.error_message();
  }
  std::vector<ClusterProcess*> workers = c.workers("prefill");
  workers.push_back(c.workers("decode")[0]);
  ExpectPagesReturnToZero(workers);

  ClusterProcess& router = c.router();
  const std::string port = router.grpc.substr(router.grpc.rfind(':') + 1);
  auto it = std::find(router.argv.begin(), router.argv.end(), "--port");
  ASSERT_NE(it, router.argv.end());
  *(it + 1) = port;  // the address the workers know
  ASSERT_TRUE(Cluster::Restart(&router));
  for (const char* kind : {"kind=\"prefill\"", "kind=\"decode\""}) {
    EXPECT_EQ(Cluster::WaitMetric(router, "tandem_workers", 1, kWaitGuard, kind), 1.0) << kind;
  }
  auto short_reqs = RunToLength(2, 22, 8);
  Streams again(router.grpc, short_reqs);
  auto& outs = again.Join();
  const auto want = Reference(short_reqs);
  for (size_t i = 0; i < short_reqs.size(); ++i) {
    ASSERT_TRUE(outs[i].status.ok()) << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, want[i]);
  }
  ExpectPagesReturnToZero(workers);
}

// Chaos, short: 1 router, 2 prefill, 3 decode workers, 64 concurrent streams; a driver SIGKILLs
// a random worker each time the streams have made some progress, and restarts it. Every stream
// completes token-exact; no page is left on any worker. TANDEM_CHAOS_ROUNDS sets the rounds
// (default 3; bench/run_chaos.sh runs many more).
TEST(FailoverTest, ChaosWorkersKilledAndRestartedUnder64Streams) {
  const int rounds =
      std::getenv("TANDEM_CHAOS_ROUNDS") ? std::atoi(std::getenv("TANDEM_CHAOS_ROUNDS")) : 3;
  const int n = 64, max_tokens = 40;
  Cluster c;
  ASSERT_TRUE(c.Start(2, 3, {"--max-failovers", "16", "--failover-wait-ms", "600000"}));
  const auto reqs = RunToLength(n, 99, max_tokens);
  Streams streams(c.router().grpc, reqs);
  std::mt19937 rng(2024);
  int kills = 0;
  for (int r = 1; r <= rounds; ++r) {
    if (!streams.UntilTotal(static_cast<size_t>(n * max_tokens * r / (rounds + 1)))) break;
    std::vector<ClusterProcess*> all = c.workers("prefill");
    for (ClusterProcess* p : c.workers("decode")) all.push_back(p);
    ClusterProcess* victim = all[rng() % all.size()];
    Cluster::Kill(victim);
    ++kills;
    ASSERT_TRUE(Cluster::Restart(victim)) << "round " << r << ": " << victim->role;
  }
  auto& outs = streams.Join();
  const auto want = Reference(reqs);
  int failed = 0, moved = 0;
  for (int i = 0; i < n; ++i) {
    if (!outs[i].status.ok()) ++failed;
    EXPECT_TRUE(outs[i].status.ok()) << "stream " << i << ": " << outs[i].status.error_message();
    EXPECT_EQ(outs[i].ids, want[i]) << "stream " << i;
    moved += outs[i].final.failovers() > 0;
  }
  std::vector<double> gaps = streams.max_gaps();
  std::sort(gaps.begin(), gaps.end());
  const double p50 = gaps[gaps.size() / 2], p99 = gaps[(gaps.size() * 99) / 100];
  std::printf(
      "chaos: %d kills, %d streams, %d failed, %d moved; max stall per stream p50 %.3f s "
      "p99 %.3f s, max %.3f s; failovers prefill %.0f decode %.0f\n",
      kills, n, failed, moved, p50, p99, gaps.back(),
      RouterMetric(c, "tandem_failovers_total", "phase=\"prefill\""),
      RouterMetric(c, "tandem_failovers_total", "phase=\"decode\""));
  RecordProperty("stall_p50_s", std::to_string(p50));
  RecordProperty("stall_p99_s", std::to_string(p99));
  std::vector<ClusterProcess*> live = c.workers("prefill");
  for (ClusterProcess* p : c.workers("decode")) live.push_back(p);
  ExpectPagesReturnToZero(live);
}

}  // namespace
}  // namespace tandem
