// `tandem bench` results: throughput, TTFT, time per output token (TPOT, per request:
// (e2e − TTFT) / (output tokens − 1)), inter-token latency (every gap between arrivals) and
// end-to-end latency, each as mean / p50 / p90 / p99, plus goodput under TTFT / TPOT targets.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "workload.h"

namespace tandem::bench {

struct RunInfo {
  std::string target;
  std::string mode;  // "concurrency 8" / "rate 2.0/s (poisson)"
  double rate = 0;   // requests/s asked (0 = as fast as the concurrency allows)
  int32_t concurrency = 0;
  double duration_s = 0;   // first send → last end
  double ttft_slo_ms = 0;  // 0 = no target
  double tpot_slo_ms = 0;
};

// mean / p50 / p90 / p99 (milliseconds) and count of durations given in seconds.
nlohmann::json LatencyStats(const std::vector<double>& seconds);

// The summary and, with `per_request`, every request's figures (for plots).
nlohmann::json Summarize(const RunInfo& info, const std::vector<RequestResult>& results,
                         bool per_request);
// A human-readable table of a summary.
std::string FormatSummary(const nlohmann::json& summary);

}  // namespace tandem::bench
