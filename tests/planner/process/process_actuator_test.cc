// The process actuator of `tandem serve --autoscale`: first against stand-in workers (shell
// scripts that print an endpoint line and exit on SIGTERM), then against a real tandem-router
// with real tandem-prefill / tandem-decode workers that register with it and leave its rotation
// when drained. Every wait ends on the event it waits for; the bounds are hang guards.
#include <signal.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../../cluster/cluster_harness.h"
#include "tandem/common/child_process.h"
#include "tandem/common/metrics.h"
#include "tandem/planner/process_actuator.h"

namespace tandem::planner {
namespace {

using Clock = std::chrono::steady_clock;
using testing::BinDir;
using testing::HttpGet;
using testing::MetricValue;
using testing::ModelDir;

constexpr auto kHangGuard = std::chrono::seconds(600);

// Polls the actuator until `done()`; false at the hang guard. Collects unexpected deaths.
template <typename Done>
bool PollUntil(ProcessActuator& act, Done done, std::vector<std::string>* died = nullptr) {
  const auto end = Clock::now() + kHangGuard;
  while (Clock::now() < end) {
    auto d = act.Poll();
    if (died != nullptr) died->insert(died->end(), d.begin(), d.end());
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

// A stand-in worker: prints its endpoint lines, then waits; SIGTERM ends it with status 0
// (`drain_status` to pretend a failed drain). `silent` prints nothing (never starts).
std::vector<std::string> FakeWorker(Pool pool, int index, bool silent = false,
                                    int drain_status = 0) {
  const std::string role = PoolName(pool);
  std::string script = "trap 'exit " + std::to_string(drain_status) + "' TERM; ";
  if (!silent) {
    script += "echo '" + role + " metrics http://127.0.0.1:1/metrics'; echo '" + role +
              " grpc 127.0.0.1:" + std::to_string(10000 + index) + "'; ";
  }
  script += "while true; do sleep 0.05; done";
  return {"/bin/sh", "-c", script};
}

TEST(ProcessActuatorTest, StartsCountsAndDrainsStandInWorkers) {
  ProcessActuatorOptions o;
  o.argv = [](Pool pool, int index) { return FakeWorker(pool, index); };
  o.scrape_timeout_s = 1;
  ProcessActuator act(o);
  EXPECT_EQ(*act.GetReplicas(Pool::kDecode), 0);
  ASSERT_TRUE(act.SetReplicas(Pool::kPrefill, 1).ok());
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 3).ok());
  EXPECT_EQ(*act.GetReplicas(Pool::kDecode), 3) << "starting workers count";
  ASSERT_TRUE(act.WaitStarted(Clock::now() + kHangGuard).ok());
  const auto lines = act.EndpointLines();
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_EQ(lines[0], "prefill metrics http://127.0.0.1:1/metrics");
  EXPECT_EQ(lines[1], "prefill grpc 127.0.0.1:10000");
  EXPECT_EQ(lines[7], "decode grpc 127.0.0.1:10002");
  EXPECT_EQ(act.MetricsUrls()[1].size(), 3u);

  // Down by two: no load can be read (nothing listens on the metrics port), so the newest go.
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 1).ok());
  EXPECT_EQ(*act.GetReplicas(Pool::kDecode), 1);
  EXPECT_EQ(act.draining(), 2);
  std::vector<std::string> died;
  ASSERT_TRUE(PollUntil(
      act, [&] { return act.drained() == 2; }, &died));
  EXPECT_TRUE(died.empty()) << died.front();
  EXPECT_EQ(act.drained_cleanly(), 2);
  EXPECT_EQ(act.EndpointLines().back(), "decode grpc 127.0.0.1:10000");

  // Up again: new indexes, never reused.
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 2).ok());
  ASSERT_TRUE(act.WaitStarted(Clock::now() + kHangGuard).ok());
  EXPECT_EQ(act.EndpointLines().back(), "decode grpc 127.0.0.1:10003");
}

TEST(ProcessActuatorTest, DrainsTheLeastLoadedWorker) {
  // The stand-ins print the URLs of in-process /metrics whose load the test sets.
  std::vector<std::unique_ptr<Metrics>> metrics;
  for (int i = 0; i < 3; ++i) {
    metrics.push_back(std::make_unique<Metrics>(MetricRole::kDecode, "m"));
    ASSERT_TRUE(metrics.back()->Serve("127.0.0.1", 0).ok());
  }
  metrics[0]->requests_running().Set(4);
  metrics[1]->requests_running().Set(1);
  metrics[1]->requests_waiting().Set(1);
  metrics[2]->requests_running().Set(3);
  ProcessActuatorOptions o;
  o.argv = [&](Pool pool, int index) {
    return std::vector<std::string>{
        "/bin/sh", "-c",
        "trap 'exit 0' TERM; echo 'decode metrics " + metrics[index]->url() +
            "'; echo 'decode grpc 127.0.0.1:" + std::to_string(10000 + index) +
            "'; while true; do sleep 0.05; done"};
  };
  ProcessActuator act(o);
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 3).ok());
  ASSERT_TRUE(act.WaitStarted(Clock::now() + kHangGuard).ok());
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 2).ok());  // worker 1: 2 requests, the fewest
  ASSERT_TRUE(PollUntil(act, [&] { return act.drained() == 1; }));
  EXPECT_EQ(act.MetricsUrls()[1], (std::vector<std::string>{metrics[0]->url(), metrics[2]->url()}));
  ASSERT_TRUE(act.SetReplicas(Pool::kDecode, 1).ok());  // then worker 2 (3 < 4)
  ASSERT_TRUE(PollUntil(act, [&] { return act.drained() == 2; }));
  EXPECT_EQ(act.MetricsUrls()[1], std::vector<std::string>{metrics[0]->url()});
}

TEST(ProcessActuatorTest, ReportsWorkersThatDieOrNeverStart) {
  ProcessActuatorOptions o;
  o.argv = [](Pool pool, int index) { return FakeWorker(pool, index, /*silent=*/index == 1); };
  o.start_timeout = std::chrono::milliseconds(300);
  ProcessActuator act(o);
  ASSERT_TRUE(act.SetReplicas(Pool::kPrefill, 1).ok());
  ASSERT_TRUE(act.WaitStarted(Clock::now() + kHangGuard).ok());
  // A worker killed from outside is reported once and no longer counts.
  auto pids = testing::ChildPids(getpid());
  ASSERT_EQ(pids.size(), 1u);
  kill(pids[0], SIGKILL);
  std::vector<std::string> died;
  ASSERT_TRUE(PollUntil(
      act, [&] { return !died.empty(); }, &died));
  EXPECT_NE(died[0].find("prefill worker 0"), std::string::npos) << died[0];
  EXPECT_NE(died[0].find("killed by signal 9"), std::string::npos) << died[0];
  EXPECT_EQ(*act.GetReplicas(Pool::kPrefill), 0);
  // Worker 1 prints nothing: past the start timeout it is killed and reported.
  ASSERT_TRUE(act.SetReplicas(Pool::kPrefill, 1).ok());
  Status st = act.WaitStarted(Clock::now() + kHangGuard);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find("did not start within 300 ms"), std::string::npos) << st.ToString();
  died.clear();
  ASSERT_TRUE(PollUntil(
      act, [&] { return *act.GetReplicas(Pool::kPrefill) == 0; }, &died));
  EXPECT_TRUE(died.empty()) << "reported twice: " << died.front();
}

// Real processes: a router, then workers the actuator starts; they register, and the drained
// one leaves the rotation and exits cleanly.
TEST(ProcessActuatorTest, RealWorkersRegisterWithTheRouterAndLeaveItWhenDrained) {
  auto spawned = ChildProcess::Spawn(
      "router", {BinDir() + "/tandem-router", "--model", ModelDir(), "--port", "0",
                 "--metrics-port", "0", "--heartbeat-ms", "200", "--log-level", "warn"});
  ASSERT_TRUE(spawned.ok()) << spawned.status().ToString();
  std::unique_ptr<ChildProcess> router = std::move(*spawned);
  ASSERT_TRUE(router->WaitStarted(Clock::now() + kHangGuard).ok());
  const std::string router_addr = router->grpc_address();
  ProcessActuatorOptions o;
  o.argv = [&](Pool pool, int index) {
    const std::string role = PoolName(pool);
    std::vector<std::string> argv = {BinDir() + "/tandem-" + role,
                                     "--model",
                                     ModelDir(),
                                     "--port",
                                     "0",
                                     "--metrics-port",
                                     "0",
                                     "--kv-cache-mb",
                                     "16",
                                     "--threads",
                                     "1",
                                     "--worker-id",
                                     role + "-" + std::to_string(index),
                                     "--router",
                                     router_addr,
                                     "--drain-ms",
                                     "60000",
                                     "--log-level",
                                     "warn"};
    if (pool == Pool::kDecode) argv.insert(argv.end(), {"--kv-port", "0"});
    return argv;
  };
  o.stop_timeout = std::chrono::seconds(120);
  auto act = std::make_unique<ProcessActuator>(o);
  ASSERT_TRUE(act->SetReplicas(Pool::kPrefill, 1).ok());
  ASSERT_TRUE(act->SetReplicas(Pool::kDecode, 2).ok());
  ASSERT_TRUE(act->WaitStarted(Clock::now() + kHangGuard).ok());
  auto workers = [&](const std::string& kind) -> std::optional<double> {
    auto body = HttpGet(router->metrics_url());
    if (!body) return std::nullopt;
    return MetricValue(*body, "tandem_workers", "kind=\"" + kind + "\"");
  };
  // Each worker prints its address once the router accepted its registration.
  EXPECT_EQ(workers("prefill"), 1);
  EXPECT_EQ(workers("decode"), 2);
  const auto urls = act->MetricsUrls()[static_cast<int>(Pool::kDecode)];
  ASSERT_EQ(urls.size(), 2u);

  ASSERT_TRUE(act->SetReplicas(Pool::kDecode, 1).ok());
  std::vector<std::string> died;
  ASSERT_TRUE(PollUntil(
      *act, [&] { return act->drained() == 1; }, &died));
  EXPECT_TRUE(died.empty()) << died.front();
  EXPECT_EQ(act->drained_cleanly(), 1);
  ASSERT_TRUE(PollUntil(*act, [&] { return workers("decode") == 1; }));
  // Both idle: the newest was drained.
  EXPECT_EQ(act->MetricsUrls()[static_cast<int>(Pool::kDecode)], std::vector<std::string>{urls[0]});
  EXPECT_FALSE(HttpGet(urls[1]).has_value()) << "the drained worker still serves";

  act->StopAll(std::chrono::seconds(120));
  EXPECT_EQ(*act->GetReplicas(Pool::kPrefill), 0);
  router->Signal(SIGTERM);
  const auto end = Clock::now() + kHangGuard;
  while (!router->Poll() && Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(router->exited_cleanly()) << router->DescribeExit();
}

}  // namespace
}  // namespace tandem::planner
