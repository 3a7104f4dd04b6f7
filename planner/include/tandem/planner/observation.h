// What the planner sees of the deployment at one instant: demand, capacity and health, read
// from Prometheus or from the router's /metrics. Every field is optional: absent means "not
// known this interval" (a failed query, a series that does not exist yet, or no traffic in the
// window for a ratio). `missing` names the inputs whose read failed; the policy holds while any
// of them is needed.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace tandem::planner {

enum class Pool { kPrefill = 0, kDecode = 1 };
inline constexpr int kPools = 2;
inline const char* PoolName(Pool p) { return p == Pool::kPrefill ? "prefill" : "decode"; }

struct Observation {
  // "prometheus" (every process's series, through PromQL), "processes" (the /metrics of the
  // router and of every worker, scraped directly: `tandem serve --autoscale`), "router" (the
  // router's /metrics only: no worker-side series; a partial view) or "" (nothing could be read).
  std::string source;
  // Demand as the router admits it (tokens per second over the rate window).
  std::optional<double> prompt_tokens_per_s;
  std::optional<double> generation_tokens_per_s;
  // Requests the router admitted, per second (tandem_requests_admitted_total).
  std::optional<double> requests_per_s;
  // Prompt tokens one prefill worker computes per second of prefill time (capacity).
  std::optional<double> prefill_tokens_per_worker_s;
  // Requests queued on the prefill workers, all together.
  std::optional<double> prefill_backlog;
  // Prompt tokens the router sent to prefill workers and has no answer for yet, all workers
  // together (tandem_prefill_queued_tokens): the prefill work ahead, in tokens.
  std::optional<double> prefill_queued_tokens;
  // Decode KV pages used / total, all decode workers together; streams in the decode batches.
  std::optional<double> decode_kv_occupancy;
  std::optional<double> decode_running;
  // Share of requests whose first token came within the TTFT SLO, and of inter-token gaps within
  // the ITL SLO (router histograms). Absent when the window saw no request.
  std::optional<double> ttft_attainment;
  std::optional<double> itl_attainment;
  // Workers in rotation on the router, per pool (tandem_workers{kind}).
  std::optional<int> prefill_workers;
  std::optional<int> decode_workers;
  // Inputs whose read failed (query name and why).
  std::vector<std::string> missing;

  // Only the router's series: the policy never scales down on it.
  bool partial_view() const { return source == "router"; }

  std::optional<int> workers(Pool p) const {
    return p == Pool::kPrefill ? prefill_workers : decode_workers;
  }
};

}  // namespace tandem::planner
