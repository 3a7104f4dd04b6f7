// Where the planner reads its Observation each interval:
//   PrometheusSource   PromQL instant queries over every process's series (the full view);
//   RouterScrapeSource the router's own /metrics, rates from consecutive scrapes (a partial view:
//                      no worker-side series, so the policy never scales down on it);
//   ProcessScrapeSource the router's /metrics and every worker's, scraped directly (`tandem
//                      serve --autoscale`, no Prometheus): the full view, source "processes";
//   FallbackSource     Prometheus when it answers, else the router.
// Every query and metric name is one of common/src/metrics.cc's.
//
// Thread safety: one planner loop calls Read; sources are not shared.
#pragma once

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/planner/exposition.h"
#include "tandem/planner/observation.h"
#include "tandem/planner/prometheus_client.h"

namespace tandem::planner {

struct SourceOptions {
  // Rate window of the PromQL queries. Default: "1m".
  std::string rate_window = "1m";
  // SLO bounds, in seconds; attainment is measured at the largest histogram bucket bound at or
  // under them. Defaults: 1 and 0.1 (deploy/base/configmap.yaml).
  double ttft_slo_s = 1.0;
  double itl_slo_s = 0.1;
  // Bound on one router scrape. Default: 5 s.
  double timeout_s = 5;
  // PEM CA bundle that https:// /metrics URLs (--metrics-tls) are verified against. Default:
  // "" (the system's CAs).
  std::string ca_file;
};

class MetricsSource {
 public:
  virtual ~MetricsSource() = default;
  // UNAVAILABLE when the source cannot be reached at all; otherwise an Observation whose
  // `missing` names any read that failed. `now_s` is a monotonic clock (rates of scrapes).
  virtual StatusOr<Observation> Read(double now_s) = 0;
  virtual std::string Describe() const = 0;
};

// The PromQL expressions PrometheusSource runs (name -> expression), for the log and the README.
std::map<std::string, std::string> PlannerQueries(const SourceOptions& options);

std::unique_ptr<MetricsSource> MakePrometheusSource(PrometheusClientOptions client,
                                                    SourceOptions options);
// `url`: the router's metrics endpoint, "http://host:port/metrics".
std::unique_ptr<MetricsSource> MakeRouterScrapeSource(std::string url, SourceOptions options);
// `router_url` as for MakeRouterScrapeSource; `workers()` answers the /metrics URLs of the
// workers in service at the moment of each Read, per pool (index Pool). A worker that does not
// answer marks its inputs missing (the policy holds).
std::unique_ptr<MetricsSource> MakeProcessScrapeSource(
    std::string router_url, std::function<std::array<std::vector<std::string>, kPools>()> workers,
    SourceOptions options);
// Either may be null (not configured), not both.
std::unique_ptr<MetricsSource> MakeFallbackSource(std::unique_ptr<MetricsSource> prometheus,
                                                  std::unique_ptr<MetricsSource> router);

}  // namespace tandem::planner
