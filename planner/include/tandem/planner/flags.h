// The planner's command-line flags, shared by tandem-planner and `tandem serve --autoscale`:
// the decision interval, the SLOs and every policy knob (each flag's default is the field's).
#pragma once

#include "tandem/planner/metrics_source.h"
#include "tandem/planner/planner.h"

namespace CLI {
class App;
class Option_group;
}  // namespace CLI

namespace tandem::planner {

// Adds --interval-s, --ttft-slo-s, --itl-slo-s, --slo-attainment, --min/max-prefill,
// --min/max-decode, --target-utilization, --prefill/decode-capacity-tokens-per-s,
// --prefill-backlog-per-worker, --prefill-queue-s-per-worker, --kv-high, --kv-target,
// --scale-down-window-s and --action-timeout-s to `app`, writing into `planner` and `source`
// (which must outlive the parse). Returns the group holding them.
CLI::Option_group* AddPlannerFlags(CLI::App& app, PlannerOptions* planner, SourceOptions* source);

// "" when the parsed values are consistent, else what is wrong (min above max).
std::string CheckPlannerFlags(const PlannerOptions& planner);

}  // namespace tandem::planner
