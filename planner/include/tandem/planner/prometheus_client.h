// A client of the Prometheus HTTP API's instant queries (GET /api/v1/query): enough for the
// planner, which reads the current value of a few expressions every interval.
//
// Thread safety: Query may be called from one thread at a time.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::planner {

struct Sample {
  std::map<std::string, std::string> labels;
  double value = 0;  // NaN and ±Inf as Prometheus returns them
};

struct PrometheusClientOptions {
  // "http://host:port" or with a path prefix ("http://host:port/prometheus"). Required.
  std::string url;
  // Bound on one query, connection included. Default: 5 s.
  double timeout_s = 5;
};

class PrometheusClient {
 public:
  explicit PrometheusClient(PrometheusClientOptions options);
  ~PrometheusClient();

  // The samples of an instant vector (a scalar result is one unlabelled sample).
  // UNAVAILABLE when Prometheus cannot be reached or answers 5xx; INVALID_ARGUMENT when it
  // refuses the expression (its error text included); DATA_LOSS on a malformed answer.
  StatusOr<std::vector<Sample>> Query(const std::string& promql);
  // One value: nullopt for an empty vector or NaN; FAILED_PRECONDITION for several samples.
  StatusOr<std::optional<double>> QueryValue(const std::string& promql);

  const std::string& url() const { return options_.url; }

 private:
  PrometheusClientOptions options_;
  std::string origin_, prefix_;
};

}  // namespace tandem::planner
