#include "tandem/planner/prometheus_client.h"

#include <cmath>
#include <cstdlib>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "url.h"

namespace tandem::planner {
namespace {

// Prometheus writes sample values as strings: "1.5", "NaN", "+Inf", "-Inf".
std::optional<double> ParseValue(const nlohmann::json& pair) {
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_string()) return std::nullopt;
  const std::string s = pair[1].get<std::string>();
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') return std::nullopt;
  return v;
}

}  // namespace

PrometheusClient::PrometheusClient(PrometheusClientOptions options) : options_(std::move(options)) {
  std::tie(origin_, prefix_) = SplitUrl(options_.url);
}

PrometheusClient::~PrometheusClient() = default;

StatusOr<std::vector<Sample>> PrometheusClient::Query(const std::string& promql) {
  httplib::Client cli(origin_);
  const auto sec = static_cast<time_t>(options_.timeout_s);
  const auto usec = static_cast<time_t>((options_.timeout_s - sec) * 1e6);
  cli.set_connection_timeout(sec, usec);
  cli.set_read_timeout(sec, usec);
  cli.set_write_timeout(sec, usec);
  auto res =
      cli.Get(prefix_ + "/api/v1/query", httplib::Params{{"query", promql}}, httplib::Headers{});
  if (!res) {
    return UnavailableError("prometheus {}: {}", options_.url, httplib::to_string(res.error()));
  }
  nlohmann::json body = nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
  if (res->status >= 500 && (body.is_discarded() || !body.contains("error"))) {
    return UnavailableError("prometheus {}: HTTP {}", options_.url, res->status);
  }
  if (body.is_discarded() || !body.is_object()) {
    return DataLossError("prometheus {}: HTTP {} with a body that is not JSON", options_.url,
                         res->status);
  }
  if (body.value("status", "") != "success") {
    const std::string err = body.value("errorType", "") + ": " + body.value("error", "");
    if (res->status >= 500 || body.value("errorType", "") == "unavailable") {
      return UnavailableError("prometheus {}: {}", options_.url, err);
    }
    return InvalidArgumentError("prometheus {} refused \"{}\": {}", options_.url, promql, err);
  }
  const auto& data = body["data"];
  if (!data.is_object() || !data.contains("result")) {
    return DataLossError("prometheus {}: answer without data.result", options_.url);
  }
  const std::string type = data.value("resultType", "");
  std::vector<Sample> out;
  if (type == "scalar") {
    auto v = ParseValue(data["result"]);
    if (!v) return DataLossError("prometheus {}: malformed scalar", options_.url);
    out.push_back({{}, *v});
    return out;
  }
  if (type != "vector" || !data["result"].is_array()) {
    return DataLossError("prometheus {}: result type \"{}\", want an instant vector", options_.url,
                         type);
  }
  for (const auto& r : data["result"]) {
    Sample s;
    auto v = ParseValue(r.value("value", nlohmann::json()));
    if (!v) return DataLossError("prometheus {}: malformed sample", options_.url);
    s.value = *v;
    if (r.contains("metric") && r["metric"].is_object()) {
      for (const auto& [k, val] : r["metric"].items()) {
        if (val.is_string()) s.labels[k] = val.get<std::string>();
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

StatusOr<std::optional<double>> PrometheusClient::QueryValue(const std::string& promql) {
  TANDEM_ASSIGN_OR_RETURN(auto samples, Query(promql));
  if (samples.empty()) return std::optional<double>();
  if (samples.size() > 1) {
    return FailedPreconditionError("prometheus {}: \"{}\" gave {} samples, want one", options_.url,
                                   promql, samples.size());
  }
  const double v = samples[0].value;
  return std::isnan(v) ? std::optional<double>() : std::optional<double>(v);
}

}  // namespace tandem::planner
