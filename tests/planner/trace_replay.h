// Replays a trace fixture (tests/planner/traces/, see its README) through a Policy: a load model
// turns each interval's demand and the workers in rotation into an Observation, and a simulated
// actuator applies the decisions (started workers join `start_intervals` later).
#pragma once

#include <array>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tandem/planner/policy.h"

namespace tandem::planner {

struct TraceStep {
  double t = 0;
  int phase = 0;
  Observation obs;
  Decision decision;
  std::array<int, kPools> target{};  // after the decision was applied
};

struct Trace {
  nlohmann::json spec;
  std::vector<TraceStep> steps;
  // Times (s) of every applied change per pool.
  std::array<std::vector<double>, kPools> changes;
  // The targets at the end of each phase.
  std::vector<std::array<int, kPools>> phase_end;
};

inline nlohmann::json LoadTrace(const std::string& name) {
  std::ifstream in(std::string(TANDEM_SOURCE_DIR) + "/tests/planner/traces/" + name);
  EXPECT_TRUE(in.good()) << name;
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str());
}

inline PolicyOptions TraceOptions(const nlohmann::json& spec) {
  PolicyOptions o;
  if (spec.contains("options")) {
    const auto& j = spec["options"];
    o.decode_capacity_tokens_per_s = j.value("decode_capacity_tokens_per_s", 0.0);
    o.prefill_capacity_tokens_per_s = j.value("prefill_capacity_tokens_per_s", 0.0);
    o.prefill.max = j.value("max_prefill", o.prefill.max);
    o.decode.max = j.value("max_decode", o.decode.max);
  }
  return o;
}

inline Trace Replay(const nlohmann::json& spec, const PolicyOptions& options) {
  Trace tr;
  tr.spec = spec;
  Policy policy(options);
  const double dt = spec["interval_s"];
  const int start_intervals = spec["start_intervals"];
  const double cp = spec["prefill_capacity"], cd = spec["decode_capacity"];
  // The prefill utilization above which TTFT misses: below 0.9 when the capacity the policy
  // measures is optimistic (queueing the capacity figure does not see).
  const double slo_up = spec.value("prefill_slo_utilization", 0.9);
  std::array<int, kPools> target = {spec["start"]["prefill"], spec["start"]["decode"]};
  std::array<int, kPools> ready = target;
  std::array<int, kPools> joins_in = {0, 0};  // intervals until `target` is in rotation
  double t = 0;
  int tick = 0;
  for (size_t ph = 0; ph < spec["phases"].size(); ++ph) {
    const auto& phase = spec["phases"][ph];
    const double end = t + phase["duration_s"].get<double>();
    for (; t < end; t += dt, ++tick) {
      for (int i = 0; i < kPools; ++i) {
        if (ready[i] > target[i] || (ready[i] < target[i] && --joins_in[i] <= 0)) {
          ready[i] = target[i];
        }
      }
      const double noise = phase.value("noise", 0.0) * (tick % 2 == 0 ? 1 : -1);
      const double prompt = phase["prompt_tokens_per_s"].get<double>() * (1 + noise);
      const double gen = phase["generation_tokens_per_s"].get<double>() * (1 + noise);
      const double up = prompt / (ready[0] * cp), ud = gen / (ready[1] * cd);
      Observation o;
      o.source = phase.value("source", std::string("prometheus"));
      o.prompt_tokens_per_s = prompt;
      // A saturated decode pool streams what it can, not what is asked.
      o.generation_tokens_per_s = std::min(gen, ready[1] * cd);
      o.prefill_workers = ready[0];
      o.decode_workers = ready[1];
      if (prompt > 0) o.ttft_attainment = up <= slo_up && ud <= 1 ? 0.99 : 0.7;
      if (gen > 0) o.itl_attainment = ud <= 0.9 ? 0.99 : 0.6;
      if (o.source == "prometheus") {
        if (prompt > 0) o.prefill_tokens_per_worker_s = cp;
        o.prefill_backlog = std::max(0.0, up - (slo_up - 0.1)) * 20 * ready[0];
        o.decode_kv_occupancy = std::min(1.0, 0.6 * ud);
        o.decode_running = gen / 20;
      }
      if (phase.contains("missing")) o.missing = phase["missing"].get<std::vector<std::string>>();
      TraceStep step;
      step.t = t;
      step.phase = static_cast<int>(ph);
      step.obs = o;
      step.decision = policy.Decide(o, target, t);
      for (int i = 0; i < kPools; ++i) {
        const PoolDecision& p = step.decision.pools[i];
        if (p.action == Action::kHold) continue;
        if (p.desired > target[i]) joins_in[i] = start_intervals;
        target[i] = p.desired;
        policy.Applied(p.pool, p.desired, t);
        tr.changes[i].push_back(t);
      }
      step.target = target;
      tr.steps.push_back(std::move(step));
    }
    tr.phase_end.push_back(target);
  }
  return tr;
}

// Changes of pool `p` within [from, to).
inline int ChangesIn(const Trace& tr, Pool p, double from, double to) {
  int n = 0;
  for (double c : tr.changes[static_cast<int>(p)]) n += c >= from && c < to;
  return n;
}

}  // namespace tandem::planner
