// A production-shaped deployment on loopback: tandem-router plus 2 prefill and 2 decode worker
// processes that register with it. Parity with the single-process engine for 32 concurrent
// requests; cancellation, deadlines and a decode worker SIGKILLed mid-transfer; a full queue;
// a draining worker. Pages in use return to zero on every surviving worker (read from /metrics).
#include <chrono>
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

#include "cluster_harness.h"
#include "tandem/engine/engine.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing::Cluster;
using testing::ClusterProcess;
using testing::HttpGet;
using testing::MetricValue;
using testing::ModelDir;

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  bool has_final = false;
  v1::GenerateFinal final;
};

v1::GenerateRequest ToProto(const GenerationRequest& g) {
  v1::GenerateRequest r;
  for (int32_t id : g.prompt) r.mutable_token_ids()->add_ids(id);
  v1::SamplingParameters* s = r.mutable_sampling();
  s->set_temperature(g.sampling.temperature);
  s->set_top_k(g.sampling.top_k);
  s->set_top_p(g.sampling.top_p);
  s->set_seed(g.sampling.seed);
  r.mutable_stopping()->set_max_tokens(g.max_tokens);
  r.mutable_stopping()->set_ignore_eos(g.ignore_eos);
  return r;
}

// Streams one Generate; cancels after `cancel_after` chunks when > 0.
Outcome Generate(const std::string& router, const v1::GenerateRequest& req,
                 std::chrono::milliseconds deadline = 180s, int cancel_after = 0) {
  auto stub = v1::Tandem::NewStub(grpc::CreateChannel(router, grpc::InsecureChannelCredentials()));
  Outcome o;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  auto reader = stub->Generate(&ctx, req);
  v1::GenerateResponse msg;
  int chunks = 0;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      o.ids.insert(o.ids.end(), msg.chunk().token_ids().begin(), msg.chunk().token_ids().end());
      if (cancel_after > 0 && ++chunks == cancel_after) ctx.TryCancel();
    } else if (msg.has_final()) {
      o.has_final = true;
      o.final = msg.final();
    }
  }
  o.status = reader->Finish();
  return o;
}

// Every request at once, one thread each.
std::vector<Outcome> GenerateAll(const std::string& router,
                                 const std::vector<GenerationRequest>& reqs) {
  std::vector<Outcome> out(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] { out[i] = Generate(router, ToProto(reqs[i])); });
  }
  for (auto& t : threads) t.join();
  return out;
}

// Varied prompt lengths (1 … max_prompt tokens) and output lengths; greedy and seeded sampling.
std::vector<GenerationRequest> MakeRequests(int n, uint32_t seed, int max_prompt, int max_new) {
  std::mt19937 rng(seed);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    const int len = 1 + static_cast<int>(rng() % max_prompt);
    for (int t = 0; t < len; ++t) r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
    r.max_tokens = 1 + static_cast<int32_t>(rng() % max_new);
    r.ignore_eos = i % 3 != 0;
    r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;
    r.sampling.top_k = i % 4 == 1 ? 40 : 0;
    r.sampling.top_p = i % 4 == 3 ? 0.9f : 1.0f;
    r.sampling.seed = 1000 + static_cast<uint64_t>(i);
    reqs.push_back(r);
  }
  return reqs;
}

// The single-process engine (what `tandem generate` runs): every request through one Generator.
std::vector<std::vector<int32_t>> Reference(const std::vector<GenerationRequest>& reqs) {
  EngineOptions eo;
  eo.kv_cache_bytes = int64_t{256} << 20;
  auto engine = Engine::Load(ModelDir(), eo);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  if (!engine.ok()) return {};
  Generator g(**engine, GeneratorOptions{});
  std::map<int64_t, size_t> which;
  for (size_t i = 0; i < reqs.size(); ++i) which[*g.Add(reqs[i])] = i;
  std::vector<std::vector<int32_t>> out(reqs.size());
  std::vector<TokenEvent> ev;
  for (int steps = 0; g.HasWork() && steps < 100000; ++steps) {
    ev.clear();
    EXPECT_TRUE(g.Step(&ev).ok());
    for (auto& e : ev) out[which[e.request]].push_back(e.token);
  }
  return out;
}

// grpc.health.v1.Health/Check by hand: SERVING = 1, NOT_SERVING = 2; -1 on RPC error.
int HealthStatus(const std::string& address, const std::string& service) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::string req = {0x0a, static_cast<char>(service.size())};
  req += service;
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 5s);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  auto fut = done.get_future();
  if (fut.wait_for(10s) != std::future_status::ready || !fut.get().ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (bytes.empty()) return 0;
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -1;
}

void ExpectPagesReturnToZero(const std::vector<ClusterProcess*>& workers) {
  for (ClusterProcess* w : workers) {
    auto used = Cluster::WaitMetric(*w, "tandem_kv_pages_used", 0, 15s);
    ASSERT_TRUE(used.has_value()) << w->role << " " << w->metrics_url << " has no page gauge";
    EXPECT_EQ(*used, 0) << w->role << " " << w->grpc << " still holds pages";
  }
}

TEST(ClusterTest, TwoByTwoGivesSingleProcessTokensFor32ConcurrentRequests) {
  Cluster c;
  ASSERT_TRUE(c.Start(2, 2));
  const auto reqs = MakeRequests(32, 7, 160, 40);
  const auto expected = Reference(reqs);
  ASSERT_EQ(expected.size(), reqs.size());
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
  EXPECT_EQ(MetricValue(*router_metrics, "tandem_time_to_first_token_seconds_count"), 32.0);
}

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
  Outcome cancelled, expired;
  std::thread tc([&] { cancelled = Generate(router, ToProto(long_req), 180s, 3); });
  std::thread td([&] { expired = Generate(router, ToProto(long_req), 2500ms); });
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

  // Long prompts keep KV moving for seconds; kill decode-1 while it waits for some.
  auto heavy = MakeRequests(8, 23, 1, 8);
  std::mt19937 rng(5);
  for (auto& r : heavy) {
    r.prompt.clear();
    for (int t = 0; t < 300; ++t) r.prompt.push_back(2 + static_cast<int32_t>(rng() % 20000));
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
  const auto waiting = Cluster::WaitMetricAtLeast(*victim, "tandem_requests_waiting", 1, 120s);
  ASSERT_GE(waiting.value_or(0), 1.0) << "decode-1 never held a reservation waiting for KV";
  Cluster::Kill(victim);
  load.join();
  int ok = 0, unavailable = 0;
  for (size_t i = 0; i < heavy.size(); ++i) {
    const auto code = heavy_got[i].status.error_code();
    if (code == grpc::StatusCode::OK) {
      ++ok;
      EXPECT_EQ(heavy_got[i].ids, heavy_expected[i]) << "request " << i;
    } else {
      ++unavailable;
      EXPECT_EQ(code, grpc::StatusCode::UNAVAILABLE)
          << "request " << i << ": " << heavy_got[i].status.error_message();
    }
  }
  EXPECT_GE(unavailable, 1) << "the killed worker's requests end UNAVAILABLE";
  EXPECT_GE(ok, 1) << "the other requests complete";

  // The router drops the dead worker (missed heartbeats) and serves on with the survivor.
  EXPECT_EQ(Cluster::WaitMetric(c.router(), "tandem_workers", 1, 10s, "kind=\"decode\""), 1.0);
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

// Deadlines of a few to a few hundred milliseconds end requests in every phase: while the router
// validates, while Reserve is on its way (the decode worker may reserve for a call already given
// up), while the prompt queues or its KV moves, while it decodes. Every page must come back
// within seconds — well before the 30 s reservation lease would reclaim a forgotten one.
TEST(ClusterTest, RequestsEndedInEveryPhaseReleaseTheirPagesWithoutWaitingForLeases) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 2));
  auto reqs = MakeRequests(24, 41, 200, 60);
  std::vector<Outcome> got(reqs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < reqs.size(); ++i) {
    threads.emplace_back([&, i] {
      got[i] = Generate(c.router().grpc, ToProto(reqs[i]), std::chrono::milliseconds(5 + 15 * i));
    });
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
  auto all = c.workers("prefill");
  for (auto* d : c.workers("decode")) all.push_back(d);
  for (ClusterProcess* w : all) {
    auto used = Cluster::WaitMetric(*w, "tandem_kv_pages_used", 0, 8s);
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(*used, 0) << w->role << " " << w->grpc << " still holds pages 8 s later";
  }
}

TEST(ClusterTest, FullQueueIsRefusedAndADrainingWorkerFinishesItsStream) {
  Cluster c;
  ASSERT_TRUE(c.Start(1, 1, {"--max-queue", "1"}));
  const std::string router = c.router().grpc;
  ClusterProcess* decode = c.workers("decode")[0];
  GenerationRequest r;
  for (int t = 0; t < 12; ++t) r.prompt.push_back(300 + t);
  r.max_tokens = 60;
  r.ignore_eos = true;
  r.sampling.temperature = 0.0f;
  const auto expected = Reference({r});

  Outcome first;
  std::thread t([&] { first = Generate(router, ToProto(r)); });
  // Wait until it streams (the decode worker runs it), then fill the queue.
  ASSERT_EQ(Cluster::WaitMetric(*decode, "tandem_requests_running", 1, 60s), 1.0);
  Outcome refused = Generate(router, ToProto(r));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("queue"), std::string::npos)
      << refused.status.error_message();

  // SIGTERM the decode worker mid-stream: NOT_SERVING while it drains, the stream finishes.
  EXPECT_EQ(HealthStatus(decode->grpc, "tandem.v1.DecodeWorker"), 1);
  kill(decode->pid, SIGTERM);
  int seen = -1;
  for (int i = 0; i < 200 && seen != 2; ++i) {
    seen = HealthStatus(decode->grpc, "tandem.v1.DecodeWorker");
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(seen, 2) << "readiness is NOT_SERVING while draining";
  // The router takes it out of rotation from its draining heartbeat.
  EXPECT_EQ(Cluster::WaitMetric(c.router(), "tandem_workers", 0, 10s, "kind=\"decode\""), 0.0);
  t.join();
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_EQ(first.ids, expected[0]);
  EXPECT_TRUE(Cluster::Terminate(decode, 30s));
  Outcome none = Generate(router, ToProto(r));
  EXPECT_EQ(none.status.error_code(), grpc::StatusCode::UNAVAILABLE) << none.status.error_message();
  ExpectPagesReturnToZero(c.workers("prefill"));
}

}  // namespace
}  // namespace tandem
