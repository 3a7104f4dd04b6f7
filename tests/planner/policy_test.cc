// The policy on recorded load traces (tests/planner/traces/) and on single observations.
#include "tandem/planner/policy.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "trace_replay.h"

namespace tandem::planner {
namespace {

constexpr int P = 0, D = 1;

// Sizing the load model's capacities call for at target utilization 0.8.
int Needed(double rate, double capacity) {
  return static_cast<int>(std::ceil(rate / (capacity * 0.8)));
}

std::string Explain(const Trace& tr) {
  std::string out;
  for (const auto& s : tr.steps) {
    for (const auto& p : s.decision.pools) {
      if (p.action != Action::kHold) {
        out += fmt::format("t={} {} {}->{}: {}\n", s.t, PoolName(p.pool), p.current, p.desired,
                           p.reason);
      }
    }
  }
  return out;
}

TEST(PolicyTraceTest, StepUpReachesTargetWithinThreeIntervalsPlusWorkerStarts) {
  const auto spec = LoadTrace("step_up.json");
  const Trace tr = Replay(spec, TraceOptions(spec));
  SCOPED_TRACE(Explain(tr));
  const double step_at = 600, dt = spec["interval_s"];
  const int start = spec["start_intervals"];
  const int want_p = Needed(1500, 1000), want_d = Needed(600, 200);  // 2, 4
  EXPECT_EQ(tr.phase_end[1][P], want_p);
  EXPECT_EQ(tr.phase_end[1][D], want_d);
  // Prefill: the prompt rate is admitted demand, so feed-forward sizes it in one decision.
  // Decode: a saturated pool streams only what it can, so its feed-forward sees demand in
  // steps: at most two decisions, each followed by a worker start.
  auto reached = [&](int pool, int want) {
    for (const auto& s : tr.steps) {
      if (s.t >= step_at && s.target[pool] >= want) return s.t;
    }
    return 1e9;
  };
  EXPECT_LE(reached(P, want_p) - step_at, (3 + start) * dt);
  EXPECT_LE(reached(D, want_d) - step_at, 2 * (3 + start) * dt);
  // Never over the need, and once there no more changes in the high phase.
  for (const auto& s : tr.steps) {
    EXPECT_LE(s.target[P], want_p) << "t=" << s.t;
    EXPECT_LE(s.target[D], want_d) << "t=" << s.t;
  }
  EXPECT_EQ(ChangesIn(tr, Pool::kPrefill, reached(P, want_p) + 1, 1e9), 0);
  EXPECT_EQ(ChangesIn(tr, Pool::kDecode, reached(D, want_d) + 1, 1e9), 0);
}

TEST(PolicyTraceTest, StepDownOneAtATimeAfterTheWindow) {
  const auto spec = LoadTrace("step_down.json");
  const PolicyOptions o = TraceOptions(spec);
  const Trace tr = Replay(spec, o);
  SCOPED_TRACE(Explain(tr));
  EXPECT_EQ(tr.phase_end[0][P], 2);  // the high phase's size holds
  EXPECT_EQ(tr.phase_end[0][D], 4);
  EXPECT_EQ(tr.phase_end[1][P], Needed(600, 1000));  // 1
  EXPECT_EQ(tr.phase_end[1][D], Needed(240, 200));   // 2
  for (int i = 0; i < kPools; ++i) {
    const auto& c = tr.changes[i];
    for (size_t k = 0; k < c.size(); ++k) {
      EXPECT_GE(c[k], 600 + o.scale_down_window_s) << "no scale-down before the window";
      if (k > 0) {
        EXPECT_GE(c[k] - c[k - 1], o.scale_down_window_s);
      }
    }
  }
  for (const auto& s : tr.steps) {
    for (const auto& p : s.decision.pools) {
      if (p.action == Action::kDown) {
        EXPECT_EQ(p.desired, p.current - 1) << "t=" << s.t;
      }
      EXPECT_NE(p.action, Action::kUp) << "t=" << s.t << " " << p.reason;
    }
    // The SLO held all along (load model: attainment 0.99 unless a pool is saturated).
    EXPECT_GE(s.obs.ttft_attainment.value_or(1), 0.95) << "t=" << s.t;
    EXPECT_GE(s.obs.itl_attainment.value_or(1), 0.95) << "t=" << s.t;
  }
}

TEST(PolicyTraceTest, ConstantLoadNeverChangesAPoolTwiceInFiveMinutes) {
  for (bool configured : {false, true}) {
    SCOPED_TRACE(configured ? "capacities configured" : "capacities measured");
    const auto spec = LoadTrace("constant_load.json");
    PolicyOptions o = TraceOptions(spec);
    if (configured) {
      o.prefill_capacity_tokens_per_s = spec["prefill_capacity"];
      o.decode_capacity_tokens_per_s = spec["decode_capacity"];
    }
    const Trace tr = Replay(spec, o);
    SCOPED_TRACE(Explain(tr));
    for (int i = 0; i < kPools; ++i) {
      const auto& c = tr.changes[i];
      for (size_t k = 1; k < c.size(); ++k) {
        EXPECT_GE(c[k] - c[k - 1], 300);
      }
      // Noise across a sizing boundary: at most the first move to the upper size.
      EXPECT_LE(c.size(), 1u);
    }
  }
}

TEST(PolicyTraceTest, ASizeThatMissedTheSloIsNotTriedAgainAtTheSameLoad) {
  const auto spec = LoadTrace("optimistic_capacity.json");
  const Trace tr = Replay(spec, TraceOptions(spec));
  SCOPED_TRACE(Explain(tr));
  const double hour = 3600;
  // One try of 1 worker (the capacity figure allows it), its SLO miss, back to 2; then never
  // again at that load.
  EXPECT_LE(ChangesIn(tr, Pool::kPrefill, 0, hour), 2);
  EXPECT_EQ(tr.phase_end[0][P], 2);
  int misses = 0;
  for (const auto& s : tr.steps) misses += s.phase == 0 && s.obs.ttft_attainment.value_or(1) < 0.95;
  EXPECT_LE(misses, 3) << "intervals of the first hour with TTFT missed";
  // A third of the load is well under what 1 worker missed at: the memory does not block it.
  EXPECT_EQ(tr.phase_end[1][P], 1);

  // Without the memory the pool flaps: down after every window, up at the next miss.
  PolicyOptions forgetful = TraceOptions(spec);
  forgetful.too_small_memory_s = 0;
  const Trace flap = Replay(spec, forgetful);
  EXPECT_GE(ChangesIn(flap, Pool::kPrefill, 0, hour), 6) << Explain(flap);
}

TEST(PolicyTraceTest, MissingMetricsHoldEveryPool) {
  const auto spec = LoadTrace("metrics_missing.json");
  const PolicyOptions o = TraceOptions(spec);
  const Trace tr = Replay(spec, o);
  SCOPED_TRACE(Explain(tr));
  for (const auto& s : tr.steps) {
    if (s.phase != 1) continue;
    for (const auto& p : s.decision.pools) {
      EXPECT_EQ(p.action, Action::kHold) << "t=" << s.t;
      EXPECT_NE(p.reason.find("metrics missing"), std::string::npos) << p.reason;
    }
  }
  // Scale-down resumes only a whole window after the metrics came back.
  for (int i = 0; i < kPools; ++i) {
    ASSERT_FALSE(tr.changes[i].empty());
    EXPECT_GE(tr.changes[i].front(), 1200 + o.scale_down_window_s);
  }
  EXPECT_EQ(tr.phase_end[2][P], 1);
}

TEST(PolicyTraceTest, PrometheusDownNeverScalesDown) {
  const auto spec = LoadTrace("prometheus_down.json");
  const PolicyOptions o = TraceOptions(spec);
  const Trace tr = Replay(spec, o);
  SCOPED_TRACE(Explain(tr));
  for (const auto& s : tr.steps) {
    if (s.phase != 1) continue;
    for (const auto& p : s.decision.pools) {
      EXPECT_NE(p.action, Action::kDown) << "t=" << s.t << " " << p.reason;
    }
  }
  EXPECT_EQ(tr.phase_end[1], tr.phase_end[0]);
  for (int i = 0; i < kPools; ++i) {
    ASSERT_FALSE(tr.changes[i].empty());
    EXPECT_GE(tr.changes[i].front(), 1500 + o.scale_down_window_s);
  }
  EXPECT_EQ(tr.phase_end[2][P], 1);
}

TEST(PolicyTraceTest, DecodeHeavyStepGrowsPrefillByAtMostOne) {
  const auto spec = LoadTrace("decode_heavy_step.json");
  const Trace tr = Replay(spec, TraceOptions(spec));
  SCOPED_TRACE(Explain(tr));
  int most_prefill = 0;
  for (const auto& s : tr.steps) most_prefill = std::max(most_prefill, s.target[P]);
  EXPECT_LE(most_prefill, tr.phase_end[0][P] + 1);
  EXPECT_EQ(tr.phase_end[1][D], Needed(720, 200));  // 5
}

// --- single decisions -----------------------------------------------------------------------

Observation Healthy() {
  Observation o;
  o.source = "prometheus";
  o.prompt_tokens_per_s = 100;
  o.generation_tokens_per_s = 50;
  o.prefill_tokens_per_worker_s = 1000;
  o.prefill_backlog = 0;
  o.decode_kv_occupancy = 0.1;
  o.decode_running = 2;
  o.ttft_attainment = 1;
  o.itl_attainment = 1;
  o.prefill_workers = 2;
  o.decode_workers = 2;
  return o;
}

TEST(PolicyTest, HoldsWithoutAnySource) {
  Policy policy({});
  Observation none;
  const Decision d = policy.Decide(none, {3, 3}, 0);
  for (const auto& p : d.pools) {
    EXPECT_EQ(p.action, Action::kHold);
    EXPECT_EQ(p.desired, 3);
  }
}

TEST(PolicyTest, HoldsWhileAnActionIsInFlightThenResumes) {
  PolicyOptions o;
  o.action_timeout_s = 100;
  Policy policy(o);
  Observation obs = Healthy();
  obs.prefill_backlog = 50;  // 25 per worker: grow
  Decision d = policy.Decide(obs, {2, 2}, 0);
  ASSERT_EQ(d.pools[P].action, Action::kUp);
  policy.Applied(Pool::kPrefill, 3, 0);
  d = policy.Decide(obs, {3, 2}, 10);  // still 2 in rotation
  EXPECT_EQ(d.pools[P].action, Action::kHold);
  EXPECT_NE(d.pools[P].reason.find("in flight"), std::string::npos);
  d = policy.Decide(obs, {3, 2}, 101);  // timed out: decides again
  EXPECT_EQ(d.pools[P].action, Action::kUp);
  EXPECT_NE(d.pools[P].reason.find("not seen in rotation"), std::string::npos);
}

TEST(PolicyTest, ClampsToMinAndMax) {
  PolicyOptions o;
  o.prefill = {2, 3};
  Policy policy(o);
  Observation obs = Healthy();
  obs.prompt_tokens_per_s = 1e6;
  Decision d = policy.Decide(obs, {3, 2}, 0);
  EXPECT_EQ(d.pools[P].action, Action::kHold);
  EXPECT_NE(d.pools[P].reason.find("at max"), std::string::npos);
  d = policy.Decide(Healthy(), {1, 2}, 0);
  EXPECT_EQ(d.pools[P].action, Action::kUp);
  EXPECT_EQ(d.pools[P].desired, 2);
  d = policy.Decide(Healthy(), {5, 2}, 0);
  EXPECT_EQ(d.pools[P].action, Action::kDown);
  EXPECT_EQ(d.pools[P].desired, 3);
}

TEST(PolicyTest, IdleShrinksToMinOneAtATime) {
  PolicyOptions o;
  o.scale_down_window_s = 60;
  Policy policy(o);
  Observation idle = Healthy();
  idle.prompt_tokens_per_s = idle.generation_tokens_per_s = 0;
  idle.decode_running = 0;
  idle.ttft_attainment.reset();
  idle.itl_attainment.reset();
  idle.prefill_workers = idle.decode_workers = 3;
  EXPECT_EQ(policy.Decide(idle, {3, 3}, 0).pools[D].action, Action::kHold);
  const Decision d = policy.Decide(idle, {3, 3}, 60);
  EXPECT_EQ(d.pools[D].action, Action::kDown);
  EXPECT_EQ(d.pools[D].desired, 2);
}

TEST(PolicyTest, QueuedPrefillTokensGrowPrefillAndBlockItsScaleDown) {
  PolicyOptions o;
  o.scale_down_window_s = 0;
  Policy policy(o);
  Observation obs = Healthy();  // 1000 prompt tokens/s per worker, 2 workers
  obs.prompt_tokens_per_s = 0;
  obs.prefill_queued_tokens = 2500;  // 1.25 s of work per worker > 1 s
  Decision d = policy.Decide(obs, {2, 2}, 0);
  EXPECT_EQ(d.pools[P].action, Action::kUp) << d.pools[P].reason;
  EXPECT_EQ(d.pools[P].desired, 3);
  EXPECT_NE(d.pools[P].reason.find("queued prompt tokens"), std::string::npos);
  obs.prefill_queued_tokens = 1500;  // 0.75 s each for 2 workers, 1.5 s for one: keep 2
  d = policy.Decide(obs, {2, 2}, 10);
  EXPECT_EQ(d.pools[P].action, Action::kHold) << d.pools[P].reason;
  EXPECT_NE(d.pools[P].reason.find("for 1 workers"), std::string::npos) << d.pools[P].reason;
  obs.prefill_queued_tokens = 0;
  d = policy.Decide(obs, {2, 2}, 20);
  EXPECT_EQ(d.pools[P].action, Action::kDown) << d.pools[P].reason;
}

TEST(PolicyTest, TheProcessesSourceIsAFullViewAndTheRouterAPartialOne) {
  PolicyOptions o;
  o.scale_down_window_s = 0;
  Observation idle = Healthy();
  idle.prompt_tokens_per_s = idle.generation_tokens_per_s = 0;
  idle.decode_running = 0;
  idle.prefill_workers = idle.decode_workers = 3;
  for (const char* source : {"processes", "router"}) {
    Policy policy(o);
    idle.source = source;
    const Decision d = policy.Decide(idle, {3, 3}, 0);
    EXPECT_EQ(d.pools[D].action, idle.source == "router" ? Action::kHold : Action::kDown)
        << source << ": " << d.pools[D].reason;
  }
}

}  // namespace
}  // namespace tandem::planner
