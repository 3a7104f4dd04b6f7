// How the planner's decisions take effect. One interface, three kinds:
//   external    publishes tandem_planner_desired_replicas{pool} on the planner's /metrics for
//               KEDA or an HPA to act on; holds the count in memory;
//   kubernetes  GET / PATCH the Deployments' /scale subresource (RBAC: deployments/scale
//               get+patch only);
//   process     starts and drains local workers: belongs to `tandem serve --autoscale` and is not
//               built yet (MakeActuator answers UNIMPLEMENTED).
//
// Thread safety: one planner loop calls an actuator.
#pragma once

#include <array>
#include <memory>
#include <optional>
#include <string>

#include "tandem/common/status.h"
#include "tandem/planner/observation.h"

namespace tandem::planner {

class PlannerMetrics;

class Actuator {
 public:
  virtual ~Actuator() = default;
  // The replica count the actuator holds for `pool` (the Deployment's spec.replicas), or nullopt
  // when it holds none yet (external, before its first decision).
  virtual StatusOr<std::optional<int>> GetReplicas(Pool pool) = 0;
  virtual Status SetReplicas(Pool pool, int replicas) = 0;
  virtual std::string Describe() const = 0;
};

struct KubernetesOptions {
  // API server origin. Default: "" = in cluster, https://$KUBERNETES_SERVICE_HOST:
  // $KUBERNETES_SERVICE_PORT.
  std::string api_url;
  // Namespace of the Deployments. Default: "" = the service account's namespace file, else
  // "default".
  std::string namespace_name;
  // Deployment names per pool (index Pool). Defaults: tandem-prefill, tandem-decode.
  std::array<std::string, kPools> deployments = {"tandem-prefill", "tandem-decode"};
  // Bearer token, re-read before every call (projected tokens rotate); CA bundle for https.
  // Missing files: no Authorization header / the system CAs. Defaults: the in-cluster paths.
  std::string token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token";
  std::string ca_file = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
  std::string namespace_file = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";
  // Bound on one API call. Default: 10 s.
  double timeout_s = 10;
};

// external: publishes through `metrics` (not owned; must outlive the actuator).
std::unique_ptr<Actuator> MakeExternalActuator(PlannerMetrics* metrics);
// kubernetes: INVALID_ARGUMENT when no API server is given and none is found in the environment.
StatusOr<std::unique_ptr<Actuator>> MakeKubernetesActuator(KubernetesOptions options);

}  // namespace tandem::planner
