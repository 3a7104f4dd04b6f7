// ProcessScrapeSource: the router's inputs from RouterScrapeSource, the worker-side ones from
// each worker's /metrics (what PrometheusSource reads through PromQL, computed here from
// consecutive scrapes).
#include <map>
#include <optional>

#include <httplib.h>

#include "tandem/planner/metrics_source.h"
#include "url.h"

namespace tandem::planner {
namespace {

StatusOr<std::vector<ExposedSample>> Scrape(const std::string& url, const SourceOptions& options) {
  auto [origin, path] = SplitUrl(url);
  httplib::Client cli(origin);
  const auto sec = static_cast<time_t>(std::max(1.0, options.timeout_s));
  cli.set_connection_timeout(sec);
  cli.set_read_timeout(sec);
  if (!options.ca_file.empty()) cli.set_ca_cert_path(options.ca_file.c_str());
  auto res = cli.Get(path.empty() ? "/metrics" : path);
  if (!res) return UnavailableError("{}: {}", url, httplib::to_string(res.error()));
  if (res->status != 200) return UnavailableError("{}: HTTP {}", url, res->status);
  return ParseExposition(res->body);
}

class ProcessScrapeSource : public MetricsSource {
 public:
  ProcessScrapeSource(std::string router_url,
                      std::function<std::array<std::vector<std::string>, kPools>()> workers,
                      SourceOptions options)
      : router_(MakeRouterScrapeSource(router_url, options)),
        router_url_(std::move(router_url)),
        workers_(std::move(workers)),
        options_(std::move(options)) {}

  std::string Describe() const override {
    return "processes (router " + router_url_ + " and every worker's /metrics)";
  }

  StatusOr<Observation> Read(double now_s) override {
    TANDEM_ASSIGN_OR_RETURN(Observation obs, router_->Read(now_s));
    obs.source = "processes";
    const auto urls = workers_();
    // Prefill: capacity from the counters' growth per worker seen twice, backlog now.
    std::map<std::string, Counters> seen;
    double tokens = 0, compute_s = 0, backlog = 0;
    bool prefill_ok = true;
    for (const auto& url : urls[static_cast<int>(Pool::kPrefill)]) {
      auto s = Scrape(url, options_);
      if (!s.ok()) {
        obs.missing.push_back("prefill " + s.status().ToString());
        prefill_ok = false;
        continue;
      }
      const std::map<std::string, std::string> role = {{"role", "prefill"}};
      Counters c{SumSamples(*s, "tandem_prompt_tokens_total", role).value_or(0),
                 SumSamples(*s, "tandem_prefill_compute_seconds_sum", role).value_or(0)};
      backlog += SumSamples(*s, "tandem_requests_waiting", role).value_or(0);
      if (auto it = last_.find(url); it != last_.end() && c.tokens >= it->second.tokens &&
                                     c.compute_s >= it->second.compute_s) {
        tokens += c.tokens - it->second.tokens;
        compute_s += c.compute_s - it->second.compute_s;
      }
      seen[url] = c;
    }
    last_ = std::move(seen);
    if (prefill_ok) {
      obs.prefill_backlog = backlog;
      if (compute_s > 0) obs.prefill_tokens_per_worker_s = tokens / compute_s;
    }
    double used = 0, total = 0, running = 0;
    bool decode_ok = true;
    for (const auto& url : urls[static_cast<int>(Pool::kDecode)]) {
      auto s = Scrape(url, options_);
      if (!s.ok()) {
        obs.missing.push_back("decode " + s.status().ToString());
        decode_ok = false;
        continue;
      }
      const std::map<std::string, std::string> role = {{"role", "decode"}};
      used += SumSamples(*s, "tandem_kv_pages_used", role).value_or(0);
      total += SumSamples(*s, "tandem_kv_pages_total", role).value_or(0);
      running += SumSamples(*s, "tandem_requests_running", role).value_or(0);
    }
    if (decode_ok) {
      if (total > 0) obs.decode_kv_occupancy = used / total;
      obs.decode_running = running;
    }
    return obs;
  }

 private:
  struct Counters {
    double tokens = 0;
    double compute_s = 0;
  };
  std::unique_ptr<MetricsSource> router_;
  std::string router_url_;
  std::function<std::array<std::vector<std::string>, kPools>()> workers_;
  SourceOptions options_;
  std::map<std::string, Counters> last_;  // prefill worker URL -> its counters at the last Read
};

}  // namespace

std::unique_ptr<MetricsSource> MakeProcessScrapeSource(
    std::string router_url, std::function<std::array<std::vector<std::string>, kPools>()> workers,
    SourceOptions options) {
  return std::make_unique<ProcessScrapeSource>(std::move(router_url), std::move(workers),
                                               std::move(options));
}

}  // namespace tandem::planner
