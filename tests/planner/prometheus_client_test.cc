// The PromQL client and the metric sources against in-process HTTP servers: a fake Prometheus
// answering /api/v1/query with recorded JSON, and a real router Metrics (common) for the
// /metrics fallback.
#include "tandem/planner/prometheus_client.h"

#include <array>
#include <atomic>
#include <map>
#include <mutex>

#include <gtest/gtest.h>

#include "../rpc/test_certs.h"
#include "fake_http_server.h"
#include "tandem/common/metrics.h"
#include "tandem/planner/metrics_source.h"

namespace tandem::planner {
namespace {

// Answers recorded from Prometheus 2.42 (the Debian 12 package), values edited.
constexpr const char* kVectorAnswer =
    R"({"status":"success","data":{"resultType":"vector","result":[)"
    R"({"metric":{"kind":"prefill"},"value":[1764782400.123,"2"]},)"
    R"({"metric":{"kind":"decode"},"value":[1764782400.123,"3"]}]}})";
constexpr const char* kErrorAnswer =
    R"({"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": )"
    R"(1:5: parse error: unexpected <EOF>"})";

std::string Scalar(double v) {
  return R"({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1764782400.123,")" +
         (std::isnan(v) ? std::string("NaN") : fmt::format("{}", v)) + R"("]}]}})";
}

std::string Buckets(const std::vector<std::pair<std::string, double>>& b) {
  std::string r;
  for (const auto& [le, v] : b) {
    r += (r.empty() ? "" : ",") +
         fmt::format(R"({{"metric":{{"le":"{}"}},"value":[1764782400.1,"{}"]}})", le, v);
  }
  return R"({"status":"success","data":{"resultType":"vector","result":[)" + r + "]}}";
}

// A fake Prometheus: query text -> answer; anything else "empty vector".
class FakePrometheus {
 public:
  FakePrometheus() {
    http_.server().Get(
        "/api/v1/query", [this](const httplib::Request& req, httplib::Response& res) {
          std::lock_guard<std::mutex> lock(mu_);
          const std::string q = req.get_param_value("query");
          seen_.push_back(q);
          auto it = answers_.find(q);
          if (it == answers_.end()) {
            res.set_content(R"({"status":"success","data":{"resultType":"vector","result":[]}})",
                            "application/json");
            return;
          }
          res.status = it->second.first;
          res.set_content(it->second.second, "application/json");
        });
    http_.Start();
  }
  void Answer(const std::string& q, std::string body, int status = 200) {
    std::lock_guard<std::mutex> lock(mu_);
    answers_[q] = {status, std::move(body)};
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  std::string url() const { return http_.url(); }
  void Stop() { http_.Stop(); }

 private:
  std::mutex mu_;
  std::map<std::string, std::pair<int, std::string>> answers_;
  std::vector<std::string> seen_;
  FakeHttpServer http_;
};

TEST(PrometheusClientTest, ParsesVectorsScalarsAndNaN) {
  FakePrometheus prom;
  prom.Answer("max by (kind) (tandem_workers)", kVectorAnswer);
  prom.Answer("one", Scalar(2.5));
  prom.Answer("nan", Scalar(NAN));
  prom.Answer("scalar(1)",
              R"({"status":"success","data":{"resultType":"scalar","result":[1764782400,"1"]}})");
  PrometheusClient c({prom.url()});
  auto v = c.Query("max by (kind) (tandem_workers)");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->size(), 2u);
  EXPECT_EQ((*v)[0].labels.at("kind"), "prefill");
  EXPECT_EQ((*v)[1].value, 3);
  auto one = c.QueryValue("one");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(**one, 2.5);
  auto nan = c.QueryValue("nan");
  ASSERT_TRUE(nan.ok());
  EXPECT_FALSE(nan->has_value());
  auto empty = c.QueryValue("absent_series");
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->has_value());
  auto scalar = c.QueryValue("scalar(1)");
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ(**scalar, 1);
  auto two = c.QueryValue("max by (kind) (tandem_workers)");
  EXPECT_EQ(two.status().code(), StatusCode::kFailedPrecondition);
}

TEST(PrometheusClientTest, SurfacesRefusalsAndOutages) {
  FakePrometheus prom;
  prom.Answer("sum(", kErrorAnswer, 400);
  prom.Answer("busy", R"({"status":"error","errorType":"unavailable","error":"too busy"})", 503);
  prom.Answer("garbage", "<html>proxy error</html>", 502);
  PrometheusClient c({prom.url()});
  auto bad = c.Query("sum(");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("parse error"), std::string::npos);
  EXPECT_EQ(c.Query("busy").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(c.Query("garbage").status().code(), StatusCode::kUnavailable);
  const std::string url = prom.url();
  prom.Stop();
  auto down = PrometheusClient({url, 5}).Query("up");
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(down.status().message().find(url), std::string::npos);
}

TEST(PrometheusSourceTest, ReadsEveryInputThroughPromQL) {
  FakePrometheus prom;
  SourceOptions o;
  const auto q = PlannerQueries(o);
  prom.Answer(q.at("prompt_tokens_per_s"), Scalar(800));
  prom.Answer(q.at("generation_tokens_per_s"), Scalar(240));
  prom.Answer(q.at("requests_per_s"), Scalar(4));
  prom.Answer(q.at("prefill_tokens_per_worker_s"), Scalar(1000));
  prom.Answer(q.at("prefill_backlog"), Scalar(3));
  prom.Answer(q.at("prefill_queued_tokens"), Scalar(640));
  prom.Answer(q.at("decode_kv_occupancy"), Scalar(0.4));
  prom.Answer(q.at("decode_running"), Scalar(12));
  prom.Answer(q.at("ttft_buckets"), Buckets({{"0.5", 2}, {"1", 9}, {"2.5", 10}, {"+Inf", 10}}));
  // An ITL SLO between bounds (0.1 s; bounds 0.08, 0.15): the bound under it counts.
  prom.Answer(q.at("itl_buckets"), Buckets({{"0.08", 90}, {"0.15", 99}, {"+Inf", 100}}));
  prom.Answer(q.at("workers"), kVectorAnswer);
  auto src = MakePrometheusSource({prom.url()}, o);
  auto obs = src->Read(0);
  ASSERT_TRUE(obs.ok()) << obs.status().ToString();
  EXPECT_EQ(obs->source, "prometheus");
  EXPECT_TRUE(obs->missing.empty());
  EXPECT_EQ(obs->prompt_tokens_per_s, 800);
  EXPECT_EQ(obs->generation_tokens_per_s, 240);
  EXPECT_EQ(obs->prefill_tokens_per_worker_s, 1000);
  EXPECT_EQ(obs->prefill_backlog, 3);
  EXPECT_EQ(obs->prefill_queued_tokens, 640);
  EXPECT_EQ(obs->decode_kv_occupancy, 0.4);
  EXPECT_EQ(obs->decode_running, 12);
  EXPECT_DOUBLE_EQ(*obs->ttft_attainment, 0.9);
  EXPECT_DOUBLE_EQ(*obs->itl_attainment, 0.9);
  EXPECT_EQ(obs->prefill_workers, 2);
  EXPECT_EQ(obs->decode_workers, 3);
  // Every query names only metrics of common/src/metrics.cc and ran once.
  EXPECT_EQ(prom.seen().size(), q.size());
  for (const auto& s : prom.seen()) EXPECT_NE(s.find("tandem_"), std::string::npos) << s;
}

TEST(PrometheusSourceTest, AFailedQueryIsMissingAndDownIsUnavailable) {
  FakePrometheus prom;
  SourceOptions o;
  prom.Answer(PlannerQueries(o).at("decode_running"), kErrorAnswer, 400);
  auto src = MakePrometheusSource({prom.url()}, o);
  auto obs = src->Read(0);
  ASSERT_TRUE(obs.ok());
  ASSERT_EQ(obs->missing.size(), 1u);
  EXPECT_NE(obs->missing[0].find("decode_running"), std::string::npos);
  prom.Stop();
  EXPECT_EQ(src->Read(1).status().code(), StatusCode::kUnavailable);
}

TEST(RouterScrapeSourceTest, RatesAndAttainmentFromTheRoutersMetrics) {
  Metrics router(MetricRole::kRouter, "m");
  ASSERT_TRUE(router.Serve("127.0.0.1", 0).ok());
  router.workers("prefill").Set(2);
  router.workers("decode").Set(1);
  router.prompt_tokens().Increment(100);
  auto src = MakeRouterScrapeSource(router.url(), {});
  auto first = src->Read(10);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source, "router");
  EXPECT_EQ(first->prefill_workers, 2);
  EXPECT_EQ(first->decode_workers, 1);
  EXPECT_FALSE(first->prompt_tokens_per_s) << "no rate from one scrape";
  router.prompt_tokens().Increment(300);
  router.generation_tokens().Increment(50);
  router.requests_admitted().Increment(4);
  router.SetPrefillQueuedTokens({{"prefill-0", 30}, {"prefill-1", 12}});
  for (double s : {0.2, 0.5, 0.9, 2.0}) router.time_to_first_token_seconds().Observe(s);
  for (int i = 0; i < 10; ++i) router.inter_token_latency_seconds().Observe(i < 9 ? 0.05 : 0.3);
  auto second = src->Read(12);
  ASSERT_TRUE(second.ok());
  EXPECT_DOUBLE_EQ(*second->prompt_tokens_per_s, 150);
  EXPECT_DOUBLE_EQ(*second->generation_tokens_per_s, 25);
  EXPECT_DOUBLE_EQ(*second->requests_per_s, 2);
  EXPECT_DOUBLE_EQ(*second->ttft_attainment, 0.75);
  EXPECT_DOUBLE_EQ(*second->itl_attainment, 0.9);
  EXPECT_DOUBLE_EQ(*second->prefill_queued_tokens, 42);
  EXPECT_FALSE(second->decode_kv_occupancy) << "a worker-side input: not on the router";
  EXPECT_TRUE(second->partial_view());
  // A worker that left the rotation takes its series with it.
  router.SetPrefillQueuedTokens({{"prefill-1", 5}});
  EXPECT_EQ(router.Render().find("prefill-0"), std::string::npos);
  auto third = src->Read(14);
  ASSERT_TRUE(third.ok());
  EXPECT_DOUBLE_EQ(*third->prefill_queued_tokens, 5);
}

TEST(ProcessScrapeSourceTest, ReadsTheRouterAndEveryWorkerDirectly) {
  Metrics router(MetricRole::kRouter, "m"), p0(MetricRole::kPrefill, "m"),
      p1(MetricRole::kPrefill, "m"), d0(MetricRole::kDecode, "m"), d1(MetricRole::kDecode, "m");
  for (Metrics* m : {&router, &p0, &p1, &d0, &d1}) ASSERT_TRUE(m->Serve("127.0.0.1", 0).ok());
  router.workers("prefill").Set(2);
  router.workers("decode").Set(2);
  p0.requests_waiting().Set(2);
  p1.requests_waiting().Set(1);
  d0.kv_pages_used().Set(10);
  d0.kv_pages_total().Set(100);
  d1.kv_pages_used().Set(30);
  d1.kv_pages_total().Set(100);
  d0.requests_running().Set(3);
  d1.requests_running().Set(4);
  std::array<std::vector<std::string>, kPools> urls = {
      std::vector<std::string>{p0.url(), p1.url()}, std::vector<std::string>{d0.url(), d1.url()}};
  auto src = MakeProcessScrapeSource(router.url(), [&] { return urls; }, {});
  auto first = src->Read(0);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->source, "processes");
  EXPECT_FALSE(first->partial_view());
  EXPECT_TRUE(first->missing.empty());
  EXPECT_EQ(first->prefill_backlog, 3);
  EXPECT_DOUBLE_EQ(*first->decode_kv_occupancy, 0.2);
  EXPECT_EQ(first->decode_running, 7);
  EXPECT_EQ(first->prefill_workers, 2);
  EXPECT_FALSE(first->prefill_tokens_per_worker_s) << "no rate from one scrape";
  // Capacity: prompt tokens per second of prefill compute, over both workers' growth.
  p0.prompt_tokens().Increment(600);
  p0.prefill_compute_seconds().Observe(1.0);
  p1.prompt_tokens().Increment(300);
  p1.prefill_compute_seconds().Observe(0.5);
  auto second = src->Read(1);
  ASSERT_TRUE(second.ok());
  EXPECT_DOUBLE_EQ(*second->prefill_tokens_per_worker_s, 600);
  // A worker that does not answer: its inputs are missing (the policy holds).
  const std::string gone = d1.url();
  urls[1] = {d0.url(), "http://127.0.0.1:1/metrics"};
  auto third = src->Read(2);
  ASSERT_TRUE(third.ok());
  ASSERT_EQ(third->missing.size(), 1u);
  EXPECT_FALSE(third->decode_kv_occupancy);
  EXPECT_TRUE(third->prefill_backlog);
}

// --metrics-tls ports: read over HTTPS, verified against SourceOptions::ca_file.
TEST(ProcessScrapeSourceTest, ReadsHttpsMetricsPortsVerifiedAgainstTheCa) {
  testing_tls::TestCerts certs("tandem-planner-tls");
  ASSERT_TRUE(certs.ok()) << certs.command();
  const MetricsTls tls{certs.Path("server.pem"), certs.Path("server.key")};
  Metrics router(MetricRole::kRouter, "m"), p0(MetricRole::kPrefill, "m"),
      d0(MetricRole::kDecode, "m");
  for (Metrics* m : {&router, &p0, &d0}) {
    ASSERT_TRUE(m->Serve("127.0.0.1", 0, nullptr, tls).ok());
    ASSERT_EQ(m->url().rfind("https://127.0.0.1:", 0), 0u) << m->url();
  }
  router.workers("prefill").Set(1);
  router.workers("decode").Set(1);
  p0.requests_waiting().Set(2);
  d0.kv_pages_used().Set(10);
  d0.kv_pages_total().Set(100);
  const std::array<std::vector<std::string>, kPools> urls = {std::vector<std::string>{p0.url()},
                                                             std::vector<std::string>{d0.url()}};
  SourceOptions o;
  o.ca_file = certs.Path("ca.pem");
  auto obs = MakeProcessScrapeSource(
                 router.url(), [&] { return urls; }, o)
                 ->Read(0);
  ASSERT_TRUE(obs.ok()) << obs.status().ToString();
  EXPECT_TRUE(obs->missing.empty());
  EXPECT_EQ(obs->prefill_workers, 1);
  EXPECT_EQ(obs->prefill_backlog, 2);
  EXPECT_DOUBLE_EQ(*obs->decode_kv_occupancy, 0.1);
  // Not trusted without the CA (the system's CAs), nor under another CA: nothing is read.
  SourceOptions other;
  other.ca_file = certs.Path("other_ca.pem");
  for (const SourceOptions& bad : {SourceOptions{}, other}) {
    EXPECT_EQ(MakeRouterScrapeSource(router.url(), bad)->Read(0).status().code(),
              StatusCode::kUnavailable);
  }
}

TEST(FallbackSourceTest, UsesTheRouterWhilePrometheusIsDown) {
  Metrics router(MetricRole::kRouter, "m");
  ASSERT_TRUE(router.Serve("127.0.0.1", 0).ok());
  FakePrometheus prom;
  const std::string prom_url = prom.url();
  prom.Stop();  // down from the start
  auto src = MakeFallbackSource(MakePrometheusSource({prom_url, 5}, {}),
                                MakeRouterScrapeSource(router.url(), {}));
  auto obs = src->Read(0);
  ASSERT_TRUE(obs.ok()) << obs.status().ToString();
  EXPECT_EQ(obs->source, "router");
  auto none = MakeFallbackSource(MakePrometheusSource({prom_url, 5}, {}),
                                 MakeRouterScrapeSource(prom_url + "/metrics", {}))
                  ->Read(0);
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tandem::planner
