// Requests against a Cluster (cluster_harness.h) and what they must give: Generate streams,
// varied request sets, the single-process engine's tokens for them, and the pages check.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "../engine/generator_reference.h"
#include "cluster_harness.h"
#include "tandem/engine/engine.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem::testing {

struct Outcome {
  grpc::Status status;
  std::vector<int32_t> ids;
  bool has_final = false;
  v1::GenerateFinal final;
};

inline v1::GenerateRequest ToProto(const GenerationRequest& g) {
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

// Guard against a hung call: every Generate here ends by itself (finished, cancelled or its own
// short deadline) long before this, on any machine.
constexpr auto kCallGuard = std::chrono::milliseconds(std::chrono::minutes(20));

// Streams one Generate; cancels after `cancel_after` chunks when > 0. `on_chunk` (optional) is
// called after every chunk with the tokens received so far.
inline Outcome Generate(const std::string& router, const v1::GenerateRequest& req,
                        std::chrono::milliseconds deadline = kCallGuard, int cancel_after = 0,
                        const std::function<void(size_t)>& on_chunk = nullptr) {
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
      if (on_chunk) on_chunk(o.ids.size());
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
inline std::vector<Outcome> GenerateAll(const std::string& router,
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
inline std::vector<GenerationRequest> MakeRequests(int n, uint32_t seed, int max_prompt,
                                                   int max_new) {
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

// The single-process engine (what `tandem generate` runs): every request through one Generator,
// every prompt computed from scratch (no prefix cache) unless `prefix_cache`.
inline std::vector<std::vector<int32_t>> Reference(const std::vector<GenerationRequest>& reqs,
                                                   bool prefix_cache = false) {
  EngineOptions eo;
  eo.kv_cache_bytes = int64_t{256} << 20;
  eo.num_threads = 1;  // like the workers (see Cluster::Start)
  eo.prefix_cache = prefix_cache;
  auto engine = Engine::Load(ModelDir(), eo);
  EXPECT_TRUE(engine.ok()) << engine.status().ToString();
  if (!engine.ok()) return {};
  return testing_engine::ReferenceTokens(**engine, reqs);
}

// One series of a process's /metrics now (-1, with a test failure, when it cannot be read).
inline double Metric(const ClusterProcess& p, const std::string& name) {
  auto body = HttpGet(p.metrics_url);
  EXPECT_TRUE(body.has_value()) << p.metrics_url;
  if (!body) return -1;
  auto v = MetricValue(*body, name);
  EXPECT_TRUE(v.has_value()) << name << " missing from " << p.metrics_url;
  return v.value_or(-1);
}

// Hang guard of the waits for a gauge or a worker count to reach a value: each returns as soon as
// it does, so this only bounds a failing run.
constexpr auto kWaitGuard = std::chrono::milliseconds(std::chrono::minutes(5));

inline void ExpectPagesReturnToZero(const std::vector<ClusterProcess*>& workers) {
  for (ClusterProcess* w : workers) {
    auto used = Cluster::WaitMetric(*w, "tandem_kv_pages_used", 0, kWaitGuard);
    ASSERT_TRUE(used.has_value()) << w->role << " " << w->metrics_url << " has no page gauge";
    EXPECT_EQ(*used, 0) << w->role << " " << w->grpc << " still holds pages";
  }
}

// A loopback TCP port free right now (-1 when none could be had): for a router that must come
// back on the same port after a restart.
inline int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

// A worker's --worker-id ("" when it was started without one).
inline std::string WorkerId(const ClusterProcess& p) {
  auto it = std::find(p.argv.begin(), p.argv.end(), "--worker-id");
  return it != p.argv.end() && it + 1 != p.argv.end() ? *(it + 1) : "";
}

// Waits until `router`'s index holds, for every worker, as many pages as the worker's cache
// (and some worker caches something); "" then, else the last values seen.
inline std::string WaitIndexMirrorsCaches(Cluster& c, const ClusterProcess& router) {
  std::vector<ClusterProcess*> workers = c.workers("prefill");
  for (auto* d : c.workers("decode")) workers.push_back(d);
  const auto end = std::chrono::steady_clock::now() + kWaitGuard;
  std::string last;
  while (std::chrono::steady_clock::now() < end) {
    auto index = HttpGet(router.metrics_url);
    bool all = index.has_value();
    double total = 0;
    last.clear();
    for (const ClusterProcess* w : workers) {
      if (!all) break;
      auto body = HttpGet(w->metrics_url);
      const auto cached = body ? MetricValue(*body, "tandem_kv_pages_cached") : std::nullopt;
      const auto indexed =
          MetricValue(*index, "tandem_reported_cached_pages", "worker=\"" + WorkerId(*w) + "\"");
      last += fmt::format("{}: index {} cache {}; ", WorkerId(*w), indexed.value_or(-1),
                          cached.value_or(-1));
      all = cached && indexed && *cached == *indexed;
      total += cached.value_or(0);
    }
    if (all && total > 0) return "";
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return last.empty() ? "no metrics" : last;
}

// The value of `metric` (with `label_filter`) on `p`'s /metrics now; `missing` when it cannot be
// read (no test failure: for polls, where a process may not serve yet or be gone).
inline double MetricOr(const ClusterProcess& p, const std::string& metric, double missing,
                       const std::string& label_filter = "") {
  auto body = HttpGet(p.metrics_url);
  return body ? MetricValue(*body, metric, label_filter).value_or(missing) : missing;
}

// Polls `find` every 20 ms until it returns a process or `limit` passes; that process, or
// nullptr.
inline ClusterProcess* PollForProcess(const std::function<ClusterProcess*()>& find,
                                      std::chrono::milliseconds limit = kWaitGuard) {
  ClusterProcess* found = nullptr;
  const auto end = std::chrono::steady_clock::now() + limit;
  while (found == nullptr && std::chrono::steady_clock::now() < end) {
    found = find();
    if (found == nullptr) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return found;
}

}  // namespace tandem::testing
