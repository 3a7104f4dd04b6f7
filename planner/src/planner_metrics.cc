#include "tandem/planner/planner_metrics.h"

#include <chrono>
#include <cmath>
#include <limits>
#include <sstream>

#include <prometheus/text_serializer.h>

namespace tandem::planner {
namespace {
const std::map<std::string, std::string> kRole = {{"role", "planner"}};

std::map<std::string, std::string> With(std::map<std::string, std::string> labels) {
  labels.insert(kRole.begin(), kRole.end());
  return labels;
}
}  // namespace

PlannerMetrics::PlannerMetrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  desired_fam_ = &prometheus::BuildGauge()
                      .Name("tandem_planner_desired_replicas")
                      .Help("Replicas the planner wants per pool (prefill, decode)")
                      .Register(r);
  current_fam_ = &prometheus::BuildGauge()
                      .Name("tandem_planner_current_replicas")
                      .Help("Replicas the actuator held per pool at the last decision")
                      .Register(r);
  ready_fam_ = &prometheus::BuildGauge()
                    .Name("tandem_planner_ready_workers")
                    .Help("Workers in rotation on the router per pool at the last decision")
                    .Register(r);
  decisions_fam_ = &prometheus::BuildCounter()
                        .Name("tandem_planner_decisions_total")
                        .Help("Planner decisions per pool, by action (up, down, hold)")
                        .Register(r);
  failures_fam_ = &prometheus::BuildCounter()
                       .Name("tandem_planner_actuation_failures_total")
                       .Help("Actuator calls that failed, per pool")
                       .Register(r);
  read_failures_ = &prometheus::BuildCounter()
                        .Name("tandem_planner_read_failures_total")
                        .Help("Intervals in which neither Prometheus nor the router answered")
                        .Register(r)
                        .Add(kRole);
  observed_fam_ = &prometheus::BuildGauge()
                       .Name("tandem_planner_observed")
                       .Help("Last value the planner read of each input (NaN when unknown)")
                       .Register(r);
  source_fam_ =
      &prometheus::BuildGauge()
           .Name("tandem_planner_metrics_source")
           .Help("1 for the source of the last read: prometheus, processes, router or none")
           .Register(r);
  advisory_ = &prometheus::BuildGauge()
                   .Name("tandem_planner_advisory")
                   .Help("1 when the planner only decides and logs, never acts")
                   .Register(r)
                   .Add(kRole);
  for (int i = 0; i < kPools; ++i) {
    const std::string pool = PoolName(static_cast<Pool>(i));
    failures_fam_->Add(With({{"pool", pool}}));
    for (const char* a : {"up", "down", "hold"}) {
      decisions_fam_->Add(With({{"pool", pool}, {"action", a}}));
    }
  }
}

PlannerMetrics::~PlannerMetrics() = default;

Status PlannerMetrics::Serve(const std::string& host, int port) {
  std::lock_guard<std::mutex> lock(mu_);
  if (http_) return FailedPreconditionError("planner metrics already served at {}", http_->url());
  TANDEM_ASSIGN_OR_RETURN(http_, MetricsHttpServer::Start(host, port, [this] { return Render(); }));
  return Status::Ok();
}

std::string PlannerMetrics::url() const {
  std::lock_guard<std::mutex> lock(mu_);
  return http_ ? http_->url() : "";
}

std::string PlannerMetrics::Render() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

prometheus::Gauge& PlannerMetrics::Gauge(prometheus::Family<prometheus::Gauge>& fam,
                                         const std::map<std::string, std::string>& labels) {
  return fam.Add(With(labels));
}

void PlannerMetrics::SetDesired(Pool pool, int replicas) {
  Gauge(*desired_fam_, {{"pool", PoolName(pool)}}).Set(replicas);
  std::lock_guard<std::mutex> lock(mu_);
  desired_[static_cast<int>(pool)] = replicas;
}

std::optional<int> PlannerMetrics::desired(Pool pool) const {
  std::lock_guard<std::mutex> lock(mu_);
  return desired_[static_cast<int>(pool)];
}

void PlannerMetrics::SetCurrent(Pool pool, int replicas) {
  Gauge(*current_fam_, {{"pool", PoolName(pool)}}).Set(replicas);
}

void PlannerMetrics::SetReady(Pool pool, std::optional<int> workers) {
  Gauge(*ready_fam_, {{"pool", PoolName(pool)}})
      .Set(workers ? *workers : std::numeric_limits<double>::quiet_NaN());
}

void PlannerMetrics::CountDecision(Pool pool, const char* action) {
  decisions_fam_->Add(With({{"pool", PoolName(pool)}, {"action", action}})).Increment();
}

void PlannerMetrics::CountActuationFailure(Pool pool) {
  failures_fam_->Add(With({{"pool", PoolName(pool)}})).Increment();
}

void PlannerMetrics::CountReadFailure() { read_failures_->Increment(); }

void PlannerMetrics::SetObserved(const std::string& input, std::optional<double> value) {
  Gauge(*observed_fam_, {{"input", input}})
      .Set(value ? *value : std::numeric_limits<double>::quiet_NaN());
}

void PlannerMetrics::SetSource(const std::string& source) {
  for (const char* s : {"prometheus", "processes", "router", "none"}) {
    Gauge(*source_fam_, {{"source", s}}).Set(source == s ? 1 : 0);
  }
}

void PlannerMetrics::SetAdvisory(bool advisory) { advisory_->Set(advisory ? 1 : 0); }

}  // namespace tandem::planner
