// A production-shaped deployment on loopback: tandem-router plus 2 prefill and 2 decode worker
// processes that register with it. Parity with the single-process engine for 32 concurrent
// requests; cancellation, deadlines and a decode worker SIGKILLed mid-transfer (its requests
// move to the other); a full queue;
// a draining worker. Pages in use return to zero on every surviving worker (read from /metrics).
#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "cluster_requests.h"
#include "tandem/engine/engine.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing::Cluster;
using testing::ClusterProcess;
using testing::ExpectPagesReturnToZero;
using testing::Generate;
using testing::GenerateAll;
using testing::HttpGet;
using testing::kCallGuard;
using testing::kWaitGuard;
using testing::MakeRequests;
using testing::MetricValue;
using testing::ModelDir;
using testing::Outcome;
using testing::Reference;
using testing::ToProto;

// How fast this deployment serves `r` alone on this machine right now: streams it (with
// ignore_eos) and measures the time to the first token and the mean time per later token.
struct Speed {
  std::chrono::duration<double> first_token{0};
  std::chrono::duration<double> per_token{0};
};
Speed MeasureSpeed(const std::string& router, GenerationRequest r) {
  r.ignore_eos = true;
  const auto start = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point first{}, last{};
  size_t first_n = 0, last_n = 0;
  Outcome o = Generate(router, ToProto(r), kCallGuard, 0, [&](size_t n) {
    const auto now = std::chrono::steady_clock::now();
    if (first_n == 0) {
      first = now;
      first_n = n;
    }
    last = now;
    last_n = n;
  });
  EXPECT_TRUE(o.status.ok()) << o.status.error_message();
  Speed s;
  if (first_n == 0) return s;
  s.first_token = first - start;
  if (last_n > first_n) s.per_token = (last - first) / static_cast<double>(last_n - first_n);
  return s;
}

// Seconds this deployment takes per prompt token to prefill a 160-token prompt alone (the best
// of two), measured now. The router gives a prompt's prefill 120 s, queueing included
// (RouterOptions::prefill_timeout, no flag): tests that queue many long prompts at once size them
// with this so that this machine prefills them all well within that.
double PrefillSecondsPerToken(const std::string& router) {
  GenerationRequest probe;
  for (int t = 0; t < 160; ++t) probe.prompt.push_back(1000 + t);
  probe.max_tokens = 2;
  const auto first = MeasureSpeed(router, probe).first_token;
  const auto second = MeasureSpeed(router, probe).first_token;
  return std::min(first, second).count() / 160;
}

// grpc.health.v1.Health/Check by hand: SERVING = 1, NOT_SERVING = 2; -1 on RPC error.
int HealthStatus(const std::string& address, const std::string& service) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::string req = {0x0a, static_cast<char>(service.size())};
  req += service;
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 60s);  // a hang guard
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  auto fut = done.get_future();
  if (fut.wait_for(120s) != std::future_status::ready || !fut.get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (bytes.empty()) return 0;
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
}

// Prompts whose KV the prefill workers moved over `transport`, and over the other transports.
std::pair<double, double> TransfersByTransport(Cluster& c, const std::string& transport) {
  double moved = 0, not_moved = 0;
  for (auto* p : c.workers("prefill")) {
    auto m = HttpGet(p->metrics_url);
    if (!m) return {-1, -1};
    for (const char* t : {"tcp", "shm", "nccl"}) {
      (t == transport ? moved : not_moved) +=
          MetricValue(*m, "tandem_kv_transfer_bytes_count", "transport=\"" + std::string(t) + "\"")
              .value_or(-1000);
    }
  }
  return {moved, not_moved};
}

// Over each KV transport (the router forces it; every worker offers tcp and shm, and nccl
// through the CPU loopback NCCL when that is the one under test).
class ClusterTransportTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ClusterTransportTest, TwoByTwoGivesSingleProcessTokensFor32ConcurrentRequests) {
  const std::string transport = GetParam();
  Cluster c;
  std::vector<std::string> worker_flags;
  if (transport == "nccl") worker_flags = {"--kv-transport", "nccl", "--nccl-library", "fake"};
  c.SetPrefillFlags(worker_flags);
  ASSERT_TRUE(c.Start(2, 2, {"--kv-transport", transport}, worker_flags));
  // All 32 prompts queue at once: 1 to 160 tokens where this machine prefills them all in a
  // quarter of the router's prefill deadline even one after another, shorter where it is slower
  // (32 prompts of 1..P tokens hold about 16 P tokens).
  const double per_token = PrefillSecondsPerToken(c.router().grpc);
  ASSERT_GT(per_token, 0.0);
  const int max_prompt = std::clamp(static_cast<int>(30.0 / (16 * per_token)), 8, 160);
  std::printf("prefill %.1f ms per prompt token alone; prompts of 1..%d tokens\n", per_token * 1e3,
              max_prompt);
  const auto reqs = MakeRequests(32, 7, max_prompt, 40);
  const auto expected = Reference(reqs);
  ASSERT_EQ(expected.size(), reqs.size());
  const double moved_before = TransfersByTransport(c, transport).first;
  auto metrics_before = HttpGet(c.router().metrics_url);
  ASSERT_TRUE(metrics_before.has_value());
  const auto ttft_before =
      MetricValue(*metrics_before, "tandem_time_to_first_token_seconds_count").value_or(0);
  const auto got = GenerateAll(c.router().grpc, reqs);
  std::set<std::string> prefills, decodes;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(got[i].status.ok()) << "request " << i << ": " << got[i].status.error_message();
    EXPECT_EQ(got[i].ids, expected[i])
        << "request " << i << " (temperature " << reqs[i].sampling.temperature << ")";
    ASSERT_TRUE(got[i].has_final);
    EXPECT_EQ(got[i].final.usage().completion_tokens(), static_cast<int>(expected[i].size()));
    prefills.insert(got[i].final.prefill_worker());
    decodes.insert(got[i].final.decode_worker());
  }
  EXPECT_EQ(prefills.size(), 2u) << "both prefill workers take work";
  EXPECT_EQ(decodes.size(), 2u) << "both decode workers take work";
  auto all = c.workers("prefill");
  for (auto* d : c.workers("decode")) all.push_back(d);
  ExpectPagesReturnToZero(all);
  auto router_metrics = HttpGet(c.router().metrics_url);
  ASSERT_TRUE(router_metrics.has_value());
  EXPECT_EQ(MetricValue(*router_metrics, "tandem_workers", "kind=\"decode\""), 2.0);
  EXPECT_EQ(MetricValue(*router_metrics, "tandem_time_to_first_token_seconds_count"),
            ttft_before + 32.0);
  // Every prompt's KV went over the forced transport, none over the other.
  const auto [moved, other] = TransfersByTransport(c, transport);
  EXPECT_EQ(moved - moved_before, 32.0) << "transfers over " << transport;
  EXPECT_EQ(other, 0.0);
}

INSTANTIATE_TEST_SUITE_P(Transports, ClusterTransportTest, ::testing::Values("tcp", "shm", "nccl"),
                         [](const auto& info) { return info.param; });

TEST(ClusterTest, CancelDeadlineAndDecodeWorkerKilledMidTransfer) {
  Cluster c;
  ASSERT_TRUE(c.Start(2, 2));
  const std::string router = c.router().grpc;

  // Cancellation and deadline next to ordinary requests.
  auto normal = MakeRequests(6, 11, 60, 12);
  const auto normal_expected = Reference(normal);
  GenerationRequest long_req;
  for (int t = 0; t < 20; ++t) long_req.prompt.push_back(100 + t);
  long_req.max_tokens = 400;
  long_req.ignore_eos = true;
  long_req.sampling.temperature = 0.0f;
  // The deadline must end the long request while it still runs, whatever this machine's speed:
  // it is a quarter of the time the request takes alone here (at most 2.5 s), measured first;
  // next to the other requests it only runs slower.
  GenerationRequest probe = long_req;
  probe.max_tokens = 16;
  const Speed speed = MeasureSpeed(router, probe);
  ASSERT_GT(speed.per_token.count(), 0.0) << "the probe streamed fewer than two chunks";
  const auto alone = speed.first_token + speed.per_token * (long_req.max_tokens - 1);
  const auto expiry = std::max<std::chrono::milliseconds>(
      1ms, std::min<std::chrono::milliseconds>(
               2500ms, std::chrono::duration_cast<std::chrono::milliseconds>(alone / 4)));
  Outcome cancelled, expired;
  std::thread tc([&] { cancelled = Generate(router, ToProto(long_req), kCallGuard, 3); });
  std::thread td([&] { expired = Generate(router, ToProto(long_req), expiry); });
  auto normal_got = GenerateAll(router, normal);
  tc.join();
  td.join();
  EXPECT_EQ(cancelled.status.error_code(), grpc::StatusCode::CANCELLED)
      << cancelled.status.error_message();
  EXPECT_EQ(expired.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << expired.status.error_message();
  for (size_t i = 0; i < normal.size(); ++i) {
    ASSERT_TRUE(normal_got[i].status.ok()) << normal_got[i].status.error_message();
    EXPECT_EQ(normal_got[i].ids, normal_expected[i]) << "request " << i;
  }
  auto all = c.workers("prefill");
  for (auto* d : c.workers("decode")) all.push_back(d);
  ExpectPagesReturnToZero(all);

  // Long prompts keep KV moving for seconds; kill decode-1 while it waits for some. They all
  // queue at once: 300 tokens where this machine prefills the 8 of them in a quarter of the
  // router's prefill deadline even one after another, shorter where it is slower.
  const double per_token = PrefillSecondsPerToken(router);
  ASSERT_GT(per_token, 0.0);
  const int heavy_prompt = std::clamp(static_cast<int>(30.0 / (8 * per_token)), 32, 300);
  std::printf("prefill %.1f ms per prompt token alone; heavy prompts of %d tokens\n",
              per_token * 1e3, heavy_prompt);
  auto heavy = MakeRequests(8, 23, 1, 8);
  std::mt19937 rng(5);
  for (auto& r : heavy) {
    r.prompt.clear();
    for (int t = 0; t < heavy_prompt; ++t) {
      r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
    }
  }
  const auto heavy_expected = Reference(heavy);
  ClusterProcess* victim = c.workers("decode")[1];
  std::vector<Outcome> heavy_got;
  std::thread load([&] { heavy_got = GenerateAll(router, heavy); });
  struct JoinOnExit {  // a failed ASSERT below must not leave `load` joinable (terminate)
    std::thread& t;
    ~JoinOnExit() {
      if (t.joinable()) t.join();
    }
  } join_load{load};
  const auto waiting =
      Cluster::WaitMetricAtLeast(*victim, "tandem_requests_waiting", 1, kWaitGuard);
  ASSERT_GE(waiting.value_or(0), 1.0) << "decode-1 never held a reservation waiting for KV";
  Cluster::Kill(victim);
  load.join();
  // The killed worker's requests move (prefill again, to the survivor): every request
  // completes with the single-process tokens.
  int moved = 0;
  for (size_t i = 0; i < heavy.size(); ++i) {
    ASSERT_TRUE(heavy_got[i].status.ok())
        << "request " << i << ": " << heavy_got[i].status.error_message();
    EXPECT_EQ(heavy_got[i].ids, heavy_expected[i]) << "request " << i;
    moved += heavy_got[i].final.failovers() > 0;
  }
  EXPECT_GE(moved, 1) << "some requests were waiting for their KV on the killed worker";
  auto failover_metrics = HttpGet(c.router().metrics_url);
  ASSERT_TRUE(failover_metrics.has_value());
  EXPECT_GE(
      MetricValue(*failover_metrics, "tandem_failovers_total", "phase=\"prefill\"").value_or(0),
      static_cast<double>(moved));

  // The router drops the dead worker (missed heartbeats) and serves on with the survivor.
  EXPECT_EQ(Cluster::WaitMetric(c.router(), "tandem_workers", 1, kWaitGuard, "kind=\"decode\""),
            1.0);
  auto after = MakeRequests(4, 31, 40, 6);
  const auto after_expected = Reference(after);
  auto after_got = GenerateAll(router, after);
  for (size_t i = 0; i < after.size(); ++i) {
    ASSERT_TRUE(after_got[i].status.ok()) << after_got[i].status.error_message();
    EXPECT_EQ(after_got[i].ids, after_expected[i]);
  }
  ExpectPagesReturnToZero(
      {c.workers("prefill")[0], c.workers("prefill")[1], c.workers("decode")[0]});
}

// Deadlines from a few milliseconds to a fraction of a request's time end requests in every
// phase: while the router validates, while Reserve is on its way (the decode worker may reserve
// for a call already given up), while the prompt queues or its KV moves, while it decodes. Every
// page must come back before the 30 s reservation lease (RouterOptions::lease_ms) could have
// reclaimed a forgotten one.
TEST(ClusterTest, RequestsEndedInEveryPhaseReleaseTheirPagesWithoutWaitingForLeases) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 2));
  auto reqs = MakeRequests(24, 41, 200, 60);
  // The deadlines span half the time a typical request here (100 prompt tokens, 30 new ones)
  // takes alone on this machine, measured first: the 24 requests together take far longer, so
  // most of them end by their deadline, in whichever phase this machine's speed puts them.
  GenerationRequest typical;
  for (int t = 0; t < 100; ++t) typical.prompt.push_back(500 + t);
  typical.max_tokens = 30;
  const Speed speed = MeasureSpeed(c.router().grpc, typical);
  const auto alone = std::chrono::duration_cast<std::chrono::milliseconds>(
      speed.first_token + speed.per_token * (typical.max_tokens - 1));
  const auto span = std::min<std::chrono::milliseconds>(alone / 2, 5s);
  std::printf("a typical request alone: %lld ms; deadlines 5 ms + up to %lld ms\n",
              static_cast<long long>(alone.count()), static_cast<long long>(span.count()));
  ExpectPagesReturnToZero(c.workers("decode"));  // the measurement's pages are back
  const auto sent = std::chrono::steady_clock::now();
  std::vector<Outcome> got(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto deadline =
        5ms + span * static_cast<int64_t>(i) / static_cast<int64_t>(reqs.size() - 1);
    threads.emplace_back(
        [&, i, deadline] { got[i] = Generate(c.router().grpc, ToProto(reqs[i]), deadline); });
  }
  for (auto& t : threads) t.join();
  int expired = 0;
  for (const auto& o : got) {
    const auto code = o.status.error_code();
    EXPECT_TRUE(code == grpc::StatusCode::OK || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                code == grpc::StatusCode::CANCELLED)
        << o.status.error_message();
    expired += code != grpc::StatusCode::OK;
  }
  EXPECT_GE(expired, 12) << "most deadlines are shorter than the requests";
  // Every reservation was made after `sent`, so until sent + 30 s no lease can have expired: the
  // pages must be back before then (a margin below it), by the requests' own ends. The wait
  // returns as soon as they are.
  const auto before_any_lease = sent + 27s;
  auto all = c.workers("prefill");
  for (auto* d : c.workers("decode")) all.push_back(d);
  for (ClusterProcess* w : all) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        before_any_lease - std::chrono::steady_clock::now());
    auto used = Cluster::WaitMetric(*w, "tandem_kv_pages_used", 0, std::max(left, 0ms));
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(*used, 0) << w->role << " " << w->grpc
                        << " still holds pages when the first lease could expire";
  }
}

TEST(ClusterTest, FullQueueIsRefusedAndADrainingWorkerFinishesItsStream) {
  Cluster c;
  // The decode worker's drain budget is only a hang guard here: the stream it lets finish must
  // not race a budget on a slow machine.
  ASSERT_TRUE(c.Start(1, 1, {"--max-queue", "1"}, {"--drain-ms", "600000"}));
  const std::string router = c.router().grpc;
  ClusterProcess* decode = c.workers("decode")[0];
  GenerationRequest r;
  for (int t = 0; t < 12; ++t) r.prompt.push_back(300 + t);
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  // The stream must still run while the test fills the queue, checks readiness and SIGTERMs the
  // worker (a few round trips): at least 60 tokens, and enough for about 5 s at the speed
  // measured here first (at most 1000).
  GenerationRequest probe = r;
  probe.max_tokens = 16;
  const Speed speed = MeasureSpeed(router, probe);
  ASSERT_GT(speed.per_token.count(), 0.0) << "the probe streamed fewer than two chunks";
  r.max_tokens = std::clamp(static_cast<int32_t>(5.0 / speed.per_token.count()), 60, 1000);
  const auto expected = Reference({r});

  Outcome first;
  std::thread t([&] { first = Generate(router, ToProto(r)); });
  // Wait until it streams (the decode worker runs it), then fill the queue.
  ASSERT_EQ(Cluster::WaitMetric(*decode, "tandem_requests_running", 1, kWaitGuard), 1.0);
  Outcome refused = Generate(router, ToProto(r));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("queue"), std::string::npos)
      << refused.status.error_message();

  // SIGTERM the decode worker mid-stream: NOT_SERVING while it drains, the stream finishes.
  EXPECT_EQ(HealthStatus(decode->grpc, "tandem.v1.DecodeWorker"), 1);
  kill(decode->pid, SIGTERM);
  // Polls until the signal is handled (SERVING until then); -1 (gone) ends the wait too.
  int seen = 1;
  for (const auto end = std::chrono::steady_clock::now() + kWaitGuard;
       seen == 1 && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(10ms);
    seen = HealthStatus(decode->grpc, "tandem.v1.DecodeWorker");
  }
  EXPECT_EQ(seen, 2) << "readiness is NOT_SERVING while draining";
  // The router takes it out of rotation from its draining heartbeat.
  EXPECT_EQ(Cluster::WaitMetric(c.router(), "tandem_workers", 0, kWaitGuard, "kind=\"decode\""),
            0.0);
  t.join();
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.ids, expected[0]);
  EXPECT_TRUE(Cluster::Terminate(decode, std::chrono::seconds(120)));
  Outcome none = Generate(router, ToProto(r));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAVAILABLE) << none.status.error_message();
  ExpectPagesReturnToZero(c.workers("prefill"));
}

}  // namespace
}  // namespace tandem
