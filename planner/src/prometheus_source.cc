// PrometheusSource: the planner's PromQL (see PlannerQueries).
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "tandem/common/logging.h"
#include "tandem/planner/metrics_source.h"

namespace tandem::planner {

std::map<std::string, std::string> PlannerQueries(const SourceOptions& o) {
  const std::string& w = o.rate_window;
  auto rate = [&](const std::string& series) {
    return fmt::format("sum(rate({}[{}]))", series, w);
  };
  return {
      {"prompt_tokens_per_s", rate("tandem_prompt_tokens_total{role=\"router\"}")},
      {"generation_tokens_per_s", rate("tandem_generation_tokens_total{role=\"router\"}")},
      {"requests_per_s", rate("tandem_requests_admitted_total{role=\"router\"}")},
      {"prefill_tokens_per_worker_s",
       rate("tandem_prompt_tokens_total{role=\"prefill\"}") + " / " +
           rate("tandem_prefill_compute_seconds_sum{role=\"prefill\"}")},
      {"prefill_backlog", "sum(tandem_requests_waiting{role=\"prefill\"})"},
      // Each router replica counts what it sent: the sum over routers and workers.
      {"prefill_queued_tokens", "sum(tandem_prefill_queued_tokens{role=\"router\"})"},
      {"decode_kv_occupancy",
       "sum(tandem_kv_pages_used{role=\"decode\"}) / sum(tandem_kv_pages_total{role=\"decode\"})"},
      {"decode_running", "sum(tandem_requests_running{role=\"decode\"})"},
      {"ttft_buckets",
       fmt::format(
           "sum by (le) (rate(tandem_time_to_first_token_seconds_bucket{{role=\"router\"}}[{}]))",
           w)},
      {"itl_buckets",
       fmt::format(
           "sum by (le) (rate(tandem_inter_token_latency_seconds_bucket{{role=\"router\"}}[{}]))",
           w)},
      // Several router replicas each count the same workers: max, not sum.
      {"workers", "max by (kind) (tandem_workers{role=\"router\"})"},
  };
}

namespace {

class PrometheusSource : public MetricsSource {
 public:
  PrometheusSource(PrometheusClientOptions client, SourceOptions options)
      : client_(std::move(client)),
        options_(std::move(options)),
        queries_(PlannerQueries(options_)) {}

  std::string Describe() const override { return "prometheus " + client_.url(); }

  StatusOr<Observation> Read(double) override {
    Observation obs;
    obs.source = "prometheus";
    int unavailable = 0, tried = 0;
    auto note = [&](const std::string& name, const Status& s) {
      ++tried;
      if (s.ok()) return true;
      if (s.code() == StatusCode::kUnavailable) ++unavailable;
      obs.missing.push_back(name + " (" + s.ToString() + ")");
      return false;
    };
    auto value = [&](const std::string& name, std::optional<double>& field) {
      auto v = client_.QueryValue(queries_.at(name));
      if (note(name, v.status())) field = *v;
    };
    value("prompt_tokens_per_s", obs.prompt_tokens_per_s);
    if (unavailable > 0) {
      // The first query could not reach Prometheus: do not wait out every other one.
      return UnavailableError("{}", obs.missing.front());
    }
    value("generation_tokens_per_s", obs.generation_tokens_per_s);
    value("requests_per_s", obs.requests_per_s);
    value("prefill_tokens_per_worker_s", obs.prefill_tokens_per_worker_s);
    value("prefill_backlog", obs.prefill_backlog);
    value("prefill_queued_tokens", obs.prefill_queued_tokens);
    value("decode_kv_occupancy", obs.decode_kv_occupancy);
    value("decode_running", obs.decode_running);
    Attainment("ttft_buckets", options_.ttft_slo_s, obs.ttft_attainment, note);
    Attainment("itl_buckets", options_.itl_slo_s, obs.itl_attainment, note);
    auto workers = client_.Query(queries_.at("workers"));
    if (note("workers", workers.status())) {
      for (const auto& s : *workers) {
        auto kind = s.labels.find("kind");
        if (kind == s.labels.end() || std::isnan(s.value)) continue;
        const int n = static_cast<int>(std::lround(s.value));
        if (kind->second == "prefill") obs.prefill_workers = n;
        if (kind->second == "decode") obs.decode_workers = n;
      }
    }
    if (unavailable == tried) return UnavailableError("{}", obs.missing.front());
    return obs;
  }

 private:
  template <typename Note>
  void Attainment(const std::string& name, double slo, std::optional<double>& field, Note& note) {
    auto samples = client_.Query(queries_.at(name));
    if (!note(name, samples.status())) return;
    std::map<double, double> buckets;
    for (const auto& s : *samples) {
      auto le = s.labels.find("le");
      if (le == s.labels.end()) continue;
      const double bound = le->second == "+Inf" ? std::numeric_limits<double>::infinity()
                                                : std::strtod(le->second.c_str(), nullptr);
      buckets[bound] = s.value;
    }
    field = AttainmentFromBuckets(buckets, slo);
  }

  PrometheusClient client_;
  SourceOptions options_;
  std::map<std::string, std::string> queries_;
};

}  // namespace

std::unique_ptr<MetricsSource> MakePrometheusSource(PrometheusClientOptions client,
                                                    SourceOptions options) {
  return std::make_unique<PrometheusSource>(std::move(client), std::move(options));
}

}  // namespace tandem::planner
