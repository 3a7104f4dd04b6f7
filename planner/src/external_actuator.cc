// The external actuator: the decision is the published tandem_planner_desired_replicas{pool};
// KEDA or an HPA (deploy/components/keda, hpa) scales the Deployments from it.
#include "tandem/planner/actuator.h"
#include "tandem/planner/planner_metrics.h"

namespace tandem::planner {
namespace {

class ExternalActuator : public Actuator {
 public:
  explicit ExternalActuator(PlannerMetrics* metrics) : metrics_(metrics) {}

  std::string Describe() const override {
    return "external (tandem_planner_desired_replicas on " + metrics_->url() + ")";
  }

  StatusOr<std::optional<int>> GetReplicas(Pool pool) override { return metrics_->desired(pool); }

  Status SetReplicas(Pool pool, int replicas) override {
    metrics_->SetDesired(pool, replicas);
    return Status::Ok();
  }

 private:
  PlannerMetrics* metrics_;
};

}  // namespace

std::unique_ptr<Actuator> MakeExternalActuator(PlannerMetrics* metrics) {
  return std::make_unique<ExternalActuator>(metrics);
}

}  // namespace tandem::planner
