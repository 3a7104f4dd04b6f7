#include "tandem/planner/flags.h"

#include <fmt/format.h>
#include <CLI/CLI.hpp>

namespace tandem::planner {

CLI::Option_group* AddPlannerFlags(CLI::App& app, PlannerOptions* planner, SourceOptions* src) {
  PolicyOptions& pol = planner->policy;
  CLI::Option_group* g = app.add_option_group("Planner", "Pool sizing (see planner/README.md)");
  g->add_option("--interval-s", planner->interval_s, "Seconds between decisions")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
  g->add_option_function<double>(
       "--ttft-slo-s",
       [src, &pol](double v) {
         src->ttft_slo_s = v;
         pol.ttft_slo_s = v;
       },
       "Time-to-first-token SLO (a bucket bound of tandem_time_to_first_token_seconds)")
      ->default_str(fmt::format("{}", src->ttft_slo_s))
      ->check(CLI::PositiveNumber);
  g->add_option("--itl-slo-s", src->itl_slo_s,
                "Inter-token latency SLO (a bucket bound of tandem_inter_token_latency_seconds)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  g->add_option("--slo-attainment", pol.slo_attainment, "Share of requests that must meet each SLO")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  g->add_option("--min-prefill", pol.prefill.min, "Fewest prefill workers")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  g->add_option("--max-prefill", pol.prefill.max, "Most prefill workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  g->add_option("--min-decode", pol.decode.min, "Fewest decode workers")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000));
  g->add_option("--max-decode", pol.decode.max, "Most decode workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000));
  g->add_option("--target-utilization", pol.target_utilization,
                "Feed-forward sizing aims each worker at this share of its capacity")
      ->capture_default_str()
      ->check(CLI::Range(0.05, 1.0));
  g->add_option("--prefill-capacity-tokens-per-s", pol.prefill_capacity_tokens_per_s,
                "Prompt tokens/s one prefill worker computes (0 = measure)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  g->add_option("--decode-capacity-tokens-per-s", pol.decode_capacity_tokens_per_s,
                "Tokens/s one decode worker generates within the ITL SLO (0 = measure)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  g->add_option("--prefill-service-scv", pol.prefill_service_scv,
                "Squared coefficient of variation of prompt compute times in the prefill "
                "queueing size (0: prompts of one size; 1: widely varying)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  g->add_option("--prefill-backlog-per-worker", pol.prefill_backlog_per_worker,
                "Queued prompts per prefill worker above which prefill grows")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  g->add_option("--prefill-queue-s-per-worker", pol.prefill_queue_s_per_worker,
                "Seconds of queued prompt tokens per prefill worker above which prefill grows")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  g->add_option("--kv-high", pol.kv_high, "Decode KV occupancy above which decode grows")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  g->add_option("--kv-target", pol.kv_target,
                "Decode KV occupancy that one fewer decode worker must stay under")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  g->add_option("--scale-down-window-s", pol.scale_down_window_s,
                "A scale-down needs this long of 'one fewer still meets the SLO', and this long "
                "since the pool's last change")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  g->add_option("--too-small-memory-s", pol.too_small_memory_s,
                "How long a pool size seen missing the SLO at some demand blocks scale-downs "
                "to it at that demand (0 = forget at once)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  g->add_option("--action-timeout-s", pol.action_timeout_s,
                "Hold a pool at most this long for an action to show in the router's rotation")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return g;
}

std::string CheckPlannerFlags(const PlannerOptions& planner) {
  if (planner.policy.prefill.min > planner.policy.prefill.max) {
    return "--min-prefill is above --max-prefill";
  }
  if (planner.policy.decode.min > planner.policy.decode.max) {
    return "--min-decode is above --max-decode";
  }
  return "";
}

}  // namespace tandem::planner
