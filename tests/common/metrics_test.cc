#include "tandem/common/metrics.h"

#include <atomic>
#include <string>
#include <utility>

#include <gtest/gtest.h>
#include <httplib.h>

#include "../rpc/test_certs.h"

namespace tandem {
namespace {

// GET url ("http://host:port/metrics") → body; "" on failure.
std::string Scrape(const std::string& url) {
  const std::string rest = url.substr(std::string("http://").size());
  const size_t slash = rest.find('/');
  httplib::Client cli("http://" + rest.substr(0, slash));
  cli.set_connection_timeout(60);  // hang guards: a scrape answers at once
  cli.set_read_timeout(60);
  auto res = cli.Get(rest.substr(slash));
  if (!res || res->status != 200) return "";
  return res->body;
}

TEST(MetricsTest, ServesEveryRoleMetricWithRoleAndModelLabels) {
  Metrics m(MetricRole::kDecode, "SmolLM2");
  ASSERT_TRUE(m.Serve("127.0.0.1", 0).ok());
  ASSERT_NE(m.url().find("http://127.0.0.1:"), std::string::npos);
  std::atomic<int> used{7};
  m.OnScrape([&] {
    m.kv_pages_used().Set(used.load());
    m.kv_pages_total().Set(100);
  });
  m.generation_tokens().Increment(5);
  m.inter_token_latency_seconds().Observe(0.03);
  m.CountError(StatusCode::kResourceExhausted);

  std::string body = Scrape(m.url());
  ASSERT_FALSE(body.empty());
  EXPECT_NE(body.find("tandem_kv_pages_used{model=\"SmolLM2\",role=\"decode\"} 7"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("tandem_kv_pages_total{model=\"SmolLM2\",role=\"decode\"} 100"),
            std::string::npos);
  EXPECT_NE(body.find("tandem_generation_tokens_total{model=\"SmolLM2\",role=\"decode\"} 5"),
            std::string::npos);
  EXPECT_NE(
      body.find("tandem_inter_token_latency_seconds_count{model=\"SmolLM2\",role=\"decode\"} 1"),
      std::string::npos);
  EXPECT_NE(body.find("tandem_request_errors_total{code=\"RESOURCE_EXHAUSTED\",model=\"SmolLM2\","
                      "role=\"decode\"} 1"),
            std::string::npos);
  // Router-only metrics are absent from a decode worker.
  EXPECT_EQ(body.find("tandem_time_to_first_token_seconds"), std::string::npos);
  EXPECT_EQ(body.find("tandem_workers"), std::string::npos);

  used = 0;  // the gauge follows live state at every scrape
  EXPECT_NE(Scrape(m.url()).find("tandem_kv_pages_used{model=\"SmolLM2\",role=\"decode\"} 0"),
            std::string::npos);
  EXPECT_EQ(m.Render().find("tandem_kv_pages_used{model=\"SmolLM2\",role=\"decode\"} 0") ==
                std::string::npos,
            false);
}

TEST(MetricsTest, RouterExportsWorkersAndLatencies) {
  Metrics m(MetricRole::kRouter, "m");
  m.workers("decode").Set(2);
  m.time_to_first_token_seconds().Observe(0.2);
  const std::string body = m.Render();
  EXPECT_NE(body.find("tandem_workers{kind=\"decode\",model=\"m\",role=\"router\"} 2"),
            std::string::npos)
      << body;
  EXPECT_NE(body.find("tandem_workers{kind=\"prefill\",model=\"m\",role=\"router\"} 0"),
            std::string::npos);
  EXPECT_NE(body.find("tandem_time_to_first_token_seconds_bucket{model=\"m\",role=\"router\","
                      "le=\"0.25\"} 1"),
            std::string::npos);
  EXPECT_EQ(body.find("tandem_kv_pages_used"), std::string::npos);
}

TEST(MetricsTest, ServeTwiceAndBusyPortAreErrors) {
  Metrics a(MetricRole::kPrefill, "m");
  ASSERT_TRUE(a.Serve("127.0.0.1", 0).ok());
  EXPECT_EQ(a.Serve("127.0.0.1", 0).code(), StatusCode::kFailedPrecondition);
  const std::string url = a.url();
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  Metrics b(MetricRole::kPrefill, "m");
  Status st = b.Serve("127.0.0.1", port);
  EXPECT_EQ(st.code(), StatusCode::kUnavailable);
  EXPECT_NE(st.message().find(std::to_string(port)), std::string::npos) << st.ToString();
}

// GET path on the server of `metrics_url` → (status, body); (-1, "") when nothing answered.
std::pair<int, std::string> Get(const std::string& metrics_url, const std::string& path) {
  const std::string rest = metrics_url.substr(std::string("http://").size());
  httplib::Client cli("http://" + rest.substr(0, rest.find('/')));
  cli.set_connection_timeout(60);
  cli.set_read_timeout(60);
  auto res = cli.Get(path);
  if (!res) return {-1, ""};
  return {res->status, res->body};
}

// /health answers what the callback says at each request: "ok" 200, any other word 503 naming
// it; without a callback there is no /health.
TEST(MetricsTest, HealthAnswersTheCallbacksStateAtEachRequest) {
  std::atomic<const char*> state{"loading"};
  Metrics m(MetricRole::kDecode, "m");
  ASSERT_TRUE(m.Serve("127.0.0.1", 0, [&] { return std::string(state.load()); }).ok());
  EXPECT_EQ(Get(m.url(), "/health"), std::make_pair(503, std::string(R"({"status":"loading"})")));
  state = "ok";
  EXPECT_EQ(Get(m.url(), "/health"), std::make_pair(200, std::string(R"({"status":"ok"})")));
  state = "draining \"now\"";
  EXPECT_EQ(Get(m.url(), "/health"),
            std::make_pair(503, std::string(R"({"status":"draining \"now\""})")));
  EXPECT_EQ(Get(m.url(), "/metrics").first, 200);

  Metrics plain(MetricRole::kDecode, "m");
  ASSERT_TRUE(plain.Serve("127.0.0.1", 0).ok());
  EXPECT_EQ(Get(plain.url(), "/health").first, 404);
}

// --metrics-tls: the same port over HTTPS with the process's certificate; a plaintext request
// gets no answer; bad files are INVALID_ARGUMENT naming them.
TEST(MetricsTest, ServesMetricsAndHealthOverHttps) {
  testing_tls::TestCerts certs("tandem-metrics-tls-test");
  ASSERT_TRUE(certs.ok()) << certs.command();
  Metrics m(MetricRole::kPrefill, "m");
  ASSERT_TRUE(m.Serve(
                   "127.0.0.1", 0, [] { return std::string("ok"); },
                   MetricsTls{certs.Path("server.pem"), certs.Path("server.key")})
                  .ok());
  ASSERT_EQ(m.url().rfind("https://127.0.0.1:", 0), 0u) << m.url();
  const std::string rest = m.url().substr(std::string("https://").size());
  httplib::SSLClient tls("127.0.0.1", std::stoi(rest.substr(rest.find(':') + 1)));
  tls.set_ca_cert_path(certs.Path("ca.pem").c_str());
  tls.enable_server_certificate_verification(true);
  tls.set_connection_timeout(60);
  tls.set_read_timeout(60);
  auto health = tls.Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(health->body, R"({"status":"ok"})");
  auto metrics = tls.Get("/metrics");
  ASSERT_TRUE(metrics) << httplib::to_string(metrics.error());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_EQ(Get("http://" + rest, "/health").first, -1);  // plaintext: no HTTP answer

  Metrics bad(MetricRole::kPrefill, "m");
  Status st = bad.Serve("127.0.0.1", 0, nullptr,
                        MetricsTls{certs.Path("missing.pem"), certs.Path("server.key")});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(certs.Path("missing.pem")), std::string::npos) << st.ToString();
  st = bad.Serve("127.0.0.1", 0, nullptr,
                 MetricsTls{certs.Path("server.pem"), certs.Path("client.key")});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  st = bad.Serve("127.0.0.1", 0, nullptr, MetricsTls{certs.Path("server.pem"), ""});
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_EQ(bad.url(), "");
}

TEST(MetricsDeathTest, MetricOfAnotherRoleIsAProgrammingError) {
  Metrics m(MetricRole::kRouter, "m");
  EXPECT_DEATH(m.kv_pages_used(), "kv_pages_used is not exported by the router role");
}

}  // namespace
}  // namespace tandem
