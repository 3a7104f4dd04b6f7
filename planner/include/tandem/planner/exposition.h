// A reader of the Prometheus text exposition format (what GET /metrics returns), enough for the
// planner's fallback: sample lines with labels; comments, HELP and TYPE lines skipped.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::planner {

struct ExposedSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// DATA_LOSS naming the line on a malformed sample line.
StatusOr<std::vector<ExposedSample>> ParseExposition(std::string_view text);

// Sum of the samples named `name` whose labels include every pair of `match`; nullopt if none.
std::optional<double> SumSamples(const std::vector<ExposedSample>& samples, std::string_view name,
                                 const std::map<std::string, std::string>& match);

// Share of observations within `slo` from cumulative bucket counts (le -> count, +Inf included):
// count(le = the largest bound <= slo) / count(+Inf). nullopt when the total is 0 or absent.
std::optional<double> AttainmentFromBuckets(const std::map<double, double>& buckets, double slo);

}  // namespace tandem::planner
