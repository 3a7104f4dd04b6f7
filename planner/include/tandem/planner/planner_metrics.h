// The planner's own /metrics (its table; the workers' and router's metrics are in
// common/src/metrics.cc):
//
// clang-format off
// | metric | type | what |
// |---|---|---|
// | tandem_planner_desired_replicas{pool} | gauge | the replicas the planner wants (what KEDA / an HPA reads with the external actuator) |
// | tandem_planner_current_replicas{pool} | gauge | the replicas the actuator held at the last decision |
// | tandem_planner_ready_workers{pool} | gauge | workers in rotation on the router at the last decision |
// | tandem_planner_decisions_total{pool,action} | counter | decisions by action (up, down, hold) |
// | tandem_planner_actuation_failures_total{pool} | counter | actuator calls that failed |
// | tandem_planner_read_failures_total | counter | intervals with no metrics at all |
// | tandem_planner_observed{input} | gauge | last value read of each input (NaN when unknown) |
// | tandem_planner_metrics_source{source} | gauge | 1 for the source of the last read (prometheus, router, none) |
// | tandem_planner_advisory | gauge | 1 in advisory mode (decides and logs, never acts) |
// clang-format on
//
// Every series carries role="planner". Thread safety: every method may be called from any
// thread.
#pragma once

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include "tandem/common/metrics_http.h"
#include "tandem/common/status.h"
#include "tandem/planner/observation.h"

namespace tandem::planner {

class PlannerMetrics {
 public:
  PlannerMetrics();
  ~PlannerMetrics();
  PlannerMetrics(const PlannerMetrics&) = delete;
  PlannerMetrics& operator=(const PlannerMetrics&) = delete;

  // Serves GET /metrics on host:port (0 = pick a free one); UNAVAILABLE when it cannot bind.
  Status Serve(const std::string& host, int port);
  std::string url() const;  // "http://host:port/metrics" once serving
  std::string Render() const;

  void SetDesired(Pool pool, int replicas);
  void SetCurrent(Pool pool, int replicas);
  void SetReady(Pool pool, std::optional<int> workers);
  void CountDecision(Pool pool, const char* action);
  void CountActuationFailure(Pool pool);
  void CountReadFailure();
  void SetObserved(const std::string& input, std::optional<double> value);
  void SetSource(const std::string& source);  // "prometheus", "router" or "none"
  void SetAdvisory(bool advisory);
  // The value of desired_replicas{pool}, or nullopt before the first SetDesired.
  std::optional<int> desired(Pool pool) const;

 private:
  prometheus::Gauge& Gauge(prometheus::Family<prometheus::Gauge>& fam,
                           const std::map<std::string, std::string>& labels);

  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::array<std::optional<int>, kPools> desired_;
  prometheus::Family<prometheus::Gauge>* desired_fam_;
  prometheus::Family<prometheus::Gauge>* current_fam_;
  prometheus::Family<prometheus::Gauge>* ready_fam_;
  prometheus::Family<prometheus::Counter>* decisions_fam_;
  prometheus::Family<prometheus::Counter>* failures_fam_;
  prometheus::Counter* read_failures_;
  prometheus::Family<prometheus::Gauge>* observed_fam_;
  prometheus::Family<prometheus::Gauge>* source_fam_;
  prometheus::Gauge* advisory_;
};

}  // namespace tandem::planner
