// The kubernetes actuator: the Deployments' /scale subresource (autoscaling/v1 Scale), read with
// GET and written with a JSON merge patch of spec.replicas.
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "tandem/planner/actuator.h"
#include "url.h"

namespace tandem::planner {
namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  if (path.empty()) return std::nullopt;
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class KubernetesActuator : public Actuator {
 public:
  explicit KubernetesActuator(KubernetesOptions o) : o_(std::move(o)) {
    std::tie(origin_, prefix_) = SplitUrl(o_.api_url);
  }

  std::string Describe() const override {
    return "kubernetes " + o_.api_url + " namespace " + o_.namespace_name + " deployments " +
           o_.deployments[0] + ", " + o_.deployments[1];
  }

  StatusOr<std::optional<int>> GetReplicas(Pool pool) override {
    TANDEM_ASSIGN_OR_RETURN(auto body, Call(pool, "GET", ""));
    const auto& spec = body.value("spec", nlohmann::json::object());
    // An unset spec.replicas in a Scale means 0.
    const auto replicas = spec.value("replicas", nlohmann::json(0));
    if (!replicas.is_number_integer()) {
      return DataLossError("kubernetes: deployment {}/{}: Scale without integer spec.replicas",
                           o_.namespace_name, Name(pool));
    }
    return std::optional<int>(replicas.get<int>());
  }

  Status SetReplicas(Pool pool, int replicas) override {
    const nlohmann::json patch = {{"spec", {{"replicas", replicas}}}};
    TANDEM_ASSIGN_OR_RETURN(auto body, Call(pool, "PATCH", patch.dump()));
    (void)body;
    return Status::Ok();
  }

 private:
  const std::string& Name(Pool pool) const { return o_.deployments[static_cast<int>(pool)]; }

  StatusOr<nlohmann::json> Call(Pool pool, const std::string& method, const std::string& body) {
    const std::string path = prefix_ + "/apis/apps/v1/namespaces/" + o_.namespace_name +
                             "/deployments/" + Name(pool) + "/scale";
    const std::string what = fmt::format("kubernetes: {} deployment {}/{} scale ({} pool)", method,
                                         o_.namespace_name, Name(pool), PoolName(pool));
    httplib::Client cli(origin_);
    const auto sec = static_cast<time_t>(o_.timeout_s);
    cli.set_connection_timeout(sec);
    cli.set_read_timeout(sec);
    cli.set_write_timeout(sec);
    if (origin_.rfind("https://", 0) == 0) {
      if (std::ifstream(o_.ca_file).good()) cli.set_ca_cert_path(o_.ca_file.c_str());
      cli.enable_server_certificate_verification(true);
    }
    httplib::Headers headers = {{"Accept", "application/json"}};
    if (auto token = ReadFile(o_.token_file); token && !token->empty()) {
      headers.emplace("Authorization", "Bearer " + *token);
    }
    auto res = method == "GET" ? cli.Get(path, headers)
                               : cli.Patch(path, headers, body, "application/merge-patch+json");
    if (!res) return UnavailableError("{}: {}", what, httplib::to_string(res.error()));
    auto json = nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
    if (res->status >= 200 && res->status < 300) {
      if (json.is_discarded() || !json.is_object()) {
        return DataLossError("{}: HTTP {} with a body that is not a JSON object", what,
                             res->status);
      }
      return json;
    }
    // A failure's body is a metav1.Status: its message says why.
    std::string message = json.is_object() ? json.value("message", "") : "";
    if (message.empty()) message = res->body.substr(0, 200);
    const std::string text = fmt::format("{}: HTTP {}: {}", what, res->status, message);
    switch (res->status) {
      case 401:
        return UnauthenticatedError("{}", text);
      case 403:
        return Status(StatusCode::kPermissionDenied,
                      text + " (the planner's Role needs get and patch on deployments/scale)");
      case 404:
        return NotFoundError("{}", text);
      case 409:
        return Status(StatusCode::kAborted, text);
      case 400:
      case 422:
        return InvalidArgumentError("{}", text);
      case 429:
        return ResourceExhaustedError("{}", text);
      default:
        return UnavailableError("{}", text);
    }
  }

  KubernetesOptions o_;
  std::string origin_, prefix_;
};

}  // namespace

StatusOr<std::unique_ptr<Actuator>> MakeKubernetesActuator(KubernetesOptions o) {
  if (o.api_url.empty()) {
    const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
    const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
    if (host == nullptr || *host == '\0') {
      return InvalidArgumentError(
          "kubernetes actuator: no API server: give --kube-api or run in a pod "
          "(KUBERNETES_SERVICE_HOST unset)");
    }
    std::string h = host;
    if (h.find(':') != std::string::npos) h = "[" + h + "]";  // IPv6
    o.api_url = fmt::format("https://{}:{}", h, port != nullptr && *port ? port : "443");
  }
  if (o.namespace_name.empty()) o.namespace_name = ReadFile(o.namespace_file).value_or("default");
  for (int i = 0; i < kPools; ++i) {
    if (o.deployments[i].empty()) {
      return InvalidArgumentError("kubernetes actuator: no deployment name for the {} pool",
                                  PoolName(static_cast<Pool>(i)));
    }
  }
  return std::unique_ptr<Actuator>(std::make_unique<KubernetesActuator>(std::move(o)));
}

}  // namespace tandem::planner
