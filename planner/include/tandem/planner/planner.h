// The planner loop: every interval, read an Observation, decide with the Policy, act through the
// Actuator (unless advisory), and write one decision-log line and the planner's own metrics.
//
// Thread safety: Tick and Run from one thread; Stop from any thread (a signal handler's thread).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>

#include "tandem/planner/actuator.h"
#include "tandem/planner/decision_log.h"
#include "tandem/planner/metrics_source.h"
#include "tandem/planner/planner_metrics.h"
#include "tandem/planner/policy.h"

namespace tandem::planner {

struct PlannerOptions {
  // Seconds between decisions. Default: 15.
  double interval_s = 15;
  // Decide and log, never call the actuator. Default: false.
  bool advisory = false;
  PolicyOptions policy;
};

class Planner {
 public:
  // `metrics` and `log` are not owned and must outlive the planner.
  Planner(PlannerOptions options, std::unique_ptr<MetricsSource> source,
          std::unique_ptr<Actuator> actuator, PlannerMetrics* metrics, DecisionLog* log);

  // One interval at monotonic time now_s. Returns the decision made.
  Decision Tick(double now_s);
  // Ticks every interval_s until Stop.
  void Run();
  void Stop();

 private:
  PlannerOptions options_;
  std::unique_ptr<MetricsSource> source_;
  std::unique_ptr<Actuator> actuator_;
  PlannerMetrics* metrics_;
  DecisionLog* log_;
  Policy policy_;
  std::array<std::optional<int>, kPools> last_target_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

}  // namespace tandem::planner
