// RouterScrapeSource and FallbackSource.
#include <cmath>
#include <limits>

#include <httplib.h>

#include "tandem/common/logging.h"
#include "tandem/planner/metrics_source.h"
#include "url.h"

namespace tandem::planner {
namespace {

// The router's counters at one scrape.
struct Counters {
  double now_s = 0;
  std::optional<double> prompt, generation, requests;
  std::map<double, double> ttft, itl;  // le -> cumulative count
};

std::map<double, double> Buckets(const std::vector<ExposedSample>& samples,
                                 const std::string& name) {
  std::map<double, double> out;
  for (const auto& s : samples) {
    if (s.name != name) continue;
    auto le = s.labels.find("le");
    auto role = s.labels.find("role");
    if (le == s.labels.end() || role == s.labels.end() || role->second != "router") continue;
    const double bound = le->second == "+Inf" ? std::numeric_limits<double>::infinity()
                                              : std::strtod(le->second.c_str(), nullptr);
    out[bound] += s.value;
  }
  return out;
}

// Per-second rate between two counter readings; nullopt when either is absent or it reset.
std::optional<double> Rate(std::optional<double> a, std::optional<double> b, double dt) {
  if (!a || !b || dt <= 0 || *b < *a) return std::nullopt;
  return (*b - *a) / dt;
}

std::map<double, double> Delta(const std::map<double, double>& a,
                               const std::map<double, double>& b) {
  std::map<double, double> out;
  for (const auto& [le, v] : b) {
    auto it = a.find(le);
    if (it == a.end() || v < it->second) return {};
    out[le] = v - it->second;
  }
  return out;
}

class RouterScrapeSource : public MetricsSource {
 public:
  RouterScrapeSource(std::string url, SourceOptions options)
      : url_(std::move(url)), options_(std::move(options)) {}

  std::string Describe() const override { return "router " + url_; }

  StatusOr<Observation> Read(double now_s) override {
    auto [origin, path] = SplitUrl(url_);
    httplib::Client cli(origin);
    const auto sec = static_cast<time_t>(options_.timeout_s);
    cli.set_connection_timeout(sec);
    cli.set_read_timeout(sec);
    if (!options_.ca_file.empty()) cli.set_ca_cert_path(options_.ca_file.c_str());
    auto res = cli.Get(path.empty() ? "/metrics" : path);
    if (!res) return UnavailableError("router {}: {}", url_, httplib::to_string(res.error()));
    if (res->status != 200) return UnavailableError("router {}: HTTP {}", url_, res->status);
    TANDEM_ASSIGN_OR_RETURN(auto samples, ParseExposition(res->body));
    const std::map<std::string, std::string> router = {{"role", "router"}};
    Counters c;
    c.now_s = now_s;
    c.prompt = SumSamples(samples, "tandem_prompt_tokens_total", router);
    c.generation = SumSamples(samples, "tandem_generation_tokens_total", router);
    c.requests = SumSamples(samples, "tandem_requests_admitted_total", router);
    c.ttft = Buckets(samples, "tandem_time_to_first_token_seconds_bucket");
    c.itl = Buckets(samples, "tandem_inter_token_latency_seconds_bucket");

    Observation obs;
    obs.source = "router";
    auto workers = [&](const char* kind) -> std::optional<int> {
      auto v = SumSamples(samples, "tandem_workers", {{"role", "router"}, {"kind", kind}});
      return v ? std::optional<int>(static_cast<int>(std::lround(*v))) : std::nullopt;
    };
    // No series before the first worker registers: nothing queued.
    obs.prefill_queued_tokens =
        SumSamples(samples, "tandem_prefill_queued_tokens", router).value_or(0);
    obs.prefill_workers = workers("prefill");
    obs.decode_workers = workers("decode");
    if (last_) {
      const double dt = now_s - last_->now_s;
      obs.prompt_tokens_per_s = Rate(last_->prompt, c.prompt, dt);
      obs.generation_tokens_per_s = Rate(last_->generation, c.generation, dt);
      obs.requests_per_s = Rate(last_->requests, c.requests, dt);
      obs.ttft_attainment = AttainmentFromBuckets(Delta(last_->ttft, c.ttft), options_.ttft_slo_s);
      obs.itl_attainment = AttainmentFromBuckets(Delta(last_->itl, c.itl), options_.itl_slo_s);
    }
    last_ = std::move(c);
    return obs;
  }

 private:
  std::string url_;
  SourceOptions options_;
  std::optional<Counters> last_;
};

class FallbackSource : public MetricsSource {
 public:
  FallbackSource(std::unique_ptr<MetricsSource> prometheus, std::unique_ptr<MetricsSource> router)
      : prometheus_(std::move(prometheus)), router_(std::move(router)) {}

  std::string Describe() const override {
    if (!prometheus_) return router_->Describe();
    if (!router_) return prometheus_->Describe();
    return prometheus_->Describe() + ", falling back to " + router_->Describe();
  }

  StatusOr<Observation> Read(double now_s) override {
    // The router is scraped every interval, so that its rates are ready the moment Prometheus
    // goes away.
    std::optional<StatusOr<Observation>> router;
    if (router_) router.emplace(router_->Read(now_s));
    if (prometheus_) {
      auto p = prometheus_->Read(now_s);
      if (p.ok() || !router) {
        if (p.ok() && falling_back_) TLOG_INFO("planner: Prometheus answers again");
        falling_back_ = false;
        return p;
      }
      if (router->ok()) {
        // Logged when it starts, not every interval (the decision log says it each time).
        if (!falling_back_) {
          TLOG_WARN("planner: {}; using the router's /metrics (partial view, no scale-down)",
                    p.status().ToString());
        }
        falling_back_ = true;
        return std::move(*router);
      }
      return UnavailableError("{}; {}", p.status().message(), router->status().message());
    }
    return std::move(*router);
  }

 private:
  std::unique_ptr<MetricsSource> prometheus_, router_;
  bool falling_back_ = false;
};

}  // namespace

std::unique_ptr<MetricsSource> MakeRouterScrapeSource(std::string url, SourceOptions options) {
  return std::make_unique<RouterScrapeSource>(std::move(url), std::move(options));
}

std::unique_ptr<MetricsSource> MakeFallbackSource(std::unique_ptr<MetricsSource> prometheus,
                                                  std::unique_ptr<MetricsSource> router) {
  return std::make_unique<FallbackSource>(std::move(prometheus), std::move(router));
}

}  // namespace tandem::planner
