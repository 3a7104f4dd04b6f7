// The planner's PromQL against a real Prometheus (the Debian binary that tools/setup.sh installs
// with promtool): Prometheus scrapes router, prefill and decode Metrics served in-process, the
// test waits until it has stored the values it set, then reads them back through
// PrometheusSource and the planner loop; with Prometheus stopped, the fallback reads the router.
// Waits are for events (a query answering the expected value); their bounds only guard hangs.
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "tandem/common/metrics.h"
#include "tandem/planner/metrics_source.h"
#include "tandem/planner/planner.h"

extern char** environ;

namespace tandem::planner {
namespace {

int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  close(s);
  return ntohs(a.sin_port);
}

std::string HostPort(const std::string& metrics_url) {  // http://h:p/metrics -> h:p
  const std::string rest = metrics_url.substr(7);
  return rest.substr(0, rest.find('/'));
}

// A Prometheus process with its own config, port and temporary storage; stopped on destruction.
class PrometheusProcess {
 public:
  PrometheusProcess(const std::vector<std::string>& targets) {
    dir_ = std::filesystem::temp_directory_path() /
           ("tandem-planner-prom." + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    std::ofstream cfg(dir_ / "prometheus.yml");
    cfg << "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n"
        << "    static_configs:\n      - targets: [";
    for (size_t i = 0; i < targets.size(); ++i) cfg << (i ? ", " : "") << '"' << targets[i] << '"';
    cfg << "]\n";
    cfg.close();
    port_ = FreePort();
    const std::vector<std::string> args = {
        "prometheus", "--config.file=" + (dir_ / "prometheus.yml").string(),
        "--storage.tsdb.path=" + (dir_ / "data").string(),
        "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=warn"};
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawnp(&pid_, "prometheus", nullptr, nullptr, argv.data(), environ) != 0) pid_ = 0;
  }
  ~PrometheusProcess() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = 0;
  }
  bool started() const { return pid_ > 0; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  std::filesystem::path dir_;
  pid_t pid_ = 0;
  int port_ = 0;
};

// Polls `expr` until it answers `want` (one value); false if that never happens in `bound_s`
// (a hang guard: Prometheus stores a scrape every second).
bool WaitFor(PrometheusClient& c, const std::string& expr, double want, double bound_s = 300) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(bound_s);
  while (std::chrono::steady_clock::now() < end) {
    auto v = c.QueryValue(expr);
    if (v.ok() && v->has_value() && std::abs(**v - want) < 1e-9) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

TEST(RealPrometheusTest, EveryInputReadsBackAndTheRouterTakesOverWhenItStops) {
  Metrics router(MetricRole::kRouter, "m"), prefill(MetricRole::kPrefill, "m"),
      decode(MetricRole::kDecode, "m");
  for (Metrics* m : {&router, &prefill, &decode}) ASSERT_TRUE(m->Serve("127.0.0.1", 0).ok());
  router.workers("prefill").Set(2);
  router.workers("decode").Set(3);
  prefill.requests_waiting().Set(5);
  decode.kv_pages_used().Set(30);
  decode.kv_pages_total().Set(120);
  decode.requests_running().Set(7);
  router.prompt_tokens().Increment(1000);
  prefill.prompt_tokens().Increment(1000);
  // Both sides of the capacity ratio start non-zero and grow alike, so that rate()'s
  // extrapolation is the same for both and the ratio exact.
  prefill.prefill_compute_seconds().Observe(2.0);

  PrometheusProcess prom({HostPort(router.url()), HostPort(prefill.url()), HostPort(decode.url())});
  ASSERT_TRUE(prom.started()) << "no `prometheus` on PATH (Debian package prometheus)";
  PrometheusClient client({prom.url(), 5});
  // First samples stored, then a second set: rates need two samples in the window.
  ASSERT_TRUE(WaitFor(client, "sum(tandem_prompt_tokens_total)", 2000));
  router.prompt_tokens().Increment(1000);
  router.generation_tokens().Increment(500);
  prefill.prompt_tokens().Increment(1000);
  prefill.prefill_compute_seconds().Observe(2.0);  // 1000 tokens in 2 s of compute
  for (double s : {0.2, 0.5, 0.9, 2.0}) router.time_to_first_token_seconds().Observe(s);
  for (int i = 0; i < 10; ++i) router.inter_token_latency_seconds().Observe(i < 9 ? 0.05 : 0.3);
  ASSERT_TRUE(WaitFor(client, "sum(tandem_prompt_tokens_total)", 4000));
  ASSERT_TRUE(WaitFor(client, "sum(tandem_generation_tokens_total)", 500));
  ASSERT_TRUE(WaitFor(client, "sum(tandem_time_to_first_token_seconds_count)", 4));
  ASSERT_TRUE(
      WaitFor(client, "sum(tandem_inter_token_latency_seconds_count{role=\"router\"})", 10));
  ASSERT_TRUE(WaitFor(client, "sum(tandem_prefill_compute_seconds_count)", 2));

  SourceOptions o;
  auto source = MakePrometheusSource({prom.url(), 5}, o);
  auto obs = source->Read(0);
  ASSERT_TRUE(obs.ok()) << obs.status().ToString();
  EXPECT_TRUE(obs->missing.empty()) << obs->missing.front();
  EXPECT_GT(obs->prompt_tokens_per_s.value_or(0), 0);
  EXPECT_GT(obs->generation_tokens_per_s.value_or(0), 0);
  EXPECT_NEAR(obs->prefill_tokens_per_worker_s.value_or(0), 500, 1e-6);
  EXPECT_EQ(obs->prefill_backlog, 5);
  EXPECT_DOUBLE_EQ(obs->decode_kv_occupancy.value_or(0), 0.25);
  EXPECT_EQ(obs->decode_running, 7);
  EXPECT_NEAR(obs->ttft_attainment.value_or(0), 0.75, 1e-9);
  EXPECT_NEAR(obs->itl_attainment.value_or(0), 0.9, 1e-9);
  EXPECT_EQ(obs->prefill_workers, 2);
  EXPECT_EQ(obs->decode_workers, 3);

  // The loop, advisory, over Prometheus with the router as fallback; then Prometheus stops.
  PlannerMetrics metrics;
  auto log = DecisionLog::Open("-");
  ASSERT_TRUE(log.ok());
  PlannerOptions po;
  po.advisory = true;
  Planner planner(po,
                  MakeFallbackSource(MakePrometheusSource({prom.url(), 5}, o),
                                     MakeRouterScrapeSource(router.url(), o)),
                  MakeExternalActuator(&metrics), &metrics, log->get());
  Decision d = planner.Tick(0);
  EXPECT_EQ(d.pools[0].current, 2);
  EXPECT_EQ(d.pools[1].current, 3);
  EXPECT_NE(metrics.Render().find("source=\"prometheus\"} 1"), std::string::npos);
  prom.Stop();
  d = planner.Tick(15);
  EXPECT_NE(metrics.Render().find("source=\"router\"} 1"), std::string::npos);
  for (const auto& p : d.pools) EXPECT_NE(p.action, Action::kDown) << p.reason;
}

}  // namespace
}  // namespace tandem::planner
