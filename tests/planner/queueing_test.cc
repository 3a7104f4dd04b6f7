// The prefill queueing size (queueing.h) against closed forms and against a simulated queue,
// and the policy taking it as its feed-forward.
#include "tandem/planner/queueing.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <queue>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/planner/policy.h"

namespace tandem::planner {
namespace {

// P(wait > t) of a FIFO queue with `n` servers, Poisson arrivals at `lambda` and a fixed service
// time, over `count` seeded arrivals (first tenth dropped as warm-up).
double SimulatedWaitTail(int n, double lambda, double service_s, double t, int count) {
  std::mt19937_64 rng(7);
  std::exponential_distribution<double> gap(lambda);
  std::priority_queue<double, std::vector<double>, std::greater<>> free_at;
  for (int i = 0; i < n; ++i) free_at.push(0);
  double now = 0;
  int over = 0, seen = 0;
  for (int i = 0; i < count; ++i) {
    now += gap(rng);
    const double start = std::max(now, free_at.top());
    free_at.pop();
    free_at.push(start + service_s);
    if (i < count / 10) continue;
    ++seen;
    if (start - now > t) ++over;
  }
  return static_cast<double>(over) / seen;
}

TEST(QueueingTest, ErlangCMatchesClosedForms) {
  EXPECT_NEAR(ErlangC(1, 0.3), 0.3, 1e-12);  // M/M/1: the chance to wait is the utilization
  EXPECT_NEAR(ErlangC(2, 0.5), 0.1, 1e-12);  // (a^2/2 * 2/1.5) / (1 + a + that)
  EXPECT_DOUBLE_EQ(ErlangC(2, 2.0), 1.0);    // overloaded
  EXPECT_DOUBLE_EQ(ErlangC(3, 0.0), 0.0);
  // Stable at sizes where a^n / n! under- or overflows.
  const double c = ErlangC(400, 380);
  EXPECT_GT(c, 0.0);
  EXPECT_LT(c, 1.0);
}

TEST(QueueingTest, ExponentialServiceIsTheExactMM1Tail) {
  const double lambda = 2, service = 0.3, t = 0.4;  // rho 0.6
  EXPECT_NEAR(WaitTail(1, lambda, service, 1.0, t), 0.6 * std::exp(-(1 / service - lambda) * t),
              1e-12);
  EXPECT_DOUBLE_EQ(WaitTail(1, 4, 0.3, 1.0, t), 1.0);  // lambda >= mu
}

// Prompts of one size (scv 0): the model's tail against a simulated M/D/n queue, at the loads
// where a TTFT SLO decides between sizes.
TEST(QueueingTest, FixedSizePromptsTailIsCloseToASimulatedQueue) {
  struct Case {
    int n;
    double lambda, service, t;
  };
  for (const Case& c : {Case{1, 1.25, 0.4, 0.6}, Case{1, 0.5, 0.4, 0.6}, Case{1, 0.9, 0.4, 0.6},
                        Case{2, 3.0, 0.4, 0.6}, Case{3, 5.0, 0.4, 0.3}}) {
    const double model = WaitTail(c.n, c.lambda, c.service, 0.0, c.t);
    const double sim = SimulatedWaitTail(c.n, c.lambda, c.service, c.t, 400000);
    SCOPED_TRACE(::testing::Message() << "n=" << c.n << " lambda=" << c.lambda << " model " << model
                                      << " simulated " << sim);
    // Within a factor of 2 either way (or both under 0.5%): enough to pick the right size when
    // the SLO's miss budget is 5%.
    if (model < 0.005 && sim < 0.005) continue;
    EXPECT_LT(model, 2 * sim + 0.002);
    EXPECT_GT(model, sim / 2 - 0.002);
  }
}

// The size it picks meets the SLO in the simulated queue and one fewer does not.
TEST(QueueingTest, WorkersForTtftIsTheSmallestSizeThatMeetsTheSloInASimulatedQueue) {
  const double service = 0.4, slo = 1.0, attainment = 0.95;
  for (double lambda : {0.5, 1.25, 2.5, 4.0, 7.0}) {
    const auto n = WorkersForTtft(lambda, service, 0.0, slo, attainment, 32);
    ASSERT_TRUE(n.has_value());
    SCOPED_TRACE(::testing::Message() << "lambda=" << lambda << " n=" << *n);
    EXPECT_LE(SimulatedWaitTail(*n, lambda, service, slo - service, 200000), 1 - attainment);
    if (*n > 1) {
      EXPECT_GT(SimulatedWaitTail(*n - 1, lambda, service, slo - service, 200000), 1 - attainment);
    }
  }
  EXPECT_EQ(WorkersForTtft(1.25, 0.4, 0.0, 1.0, 0.95, 32), 2);
  EXPECT_EQ(WorkersForTtft(0.5, 0.4, 0.0, 1.0, 0.95, 32), 1);
  EXPECT_EQ(WorkersForTtft(1.0, 1.2, 0.0, 1.0, 0.95, 32), std::nullopt);  // no time to wait
  EXPECT_EQ(WorkersForTtft(100, 0.4, 0.0, 1.0, 0.95, 4), 5);              // beyond the max
}

Observation PrefillAt(double requests_per_s, double prompt_tokens) {
  Observation o;
  o.source = "prometheus";
  o.requests_per_s = requests_per_s;
  o.prompt_tokens_per_s = requests_per_s * prompt_tokens;
  o.generation_tokens_per_s = 10;
  o.prefill_tokens_per_worker_s = 318;
  o.prefill_backlog = 0;
  o.prefill_queued_tokens = 0;
  o.decode_kv_occupancy = 0.1;
  o.decode_running = 1;
  o.ttft_attainment = 1;
  o.itl_attainment = 1;
  o.prefill_workers = 1;
  o.decode_workers = 1;
  return o;
}

// At half of one worker's capacity a 1 s TTFT SLO still needs two workers when a prompt takes
// 0.4 s: utilization alone (target 0.8) would keep one until the queue or the SLO misses said so.
TEST(QueueingTest, PolicySizesPrefillForTheTtftSloInOneDecision) {
  PolicyOptions o;
  o.ttft_slo_s = 1.0;
  o.prefill_service_scv = 0;
  o.scale_down_window_s = 0;
  Policy policy(o);
  Observation high = PrefillAt(1.25, 128);  // 160 tok/s of 318: utilization 0.5
  Decision d = policy.Decide(high, {1, 1}, 0);
  EXPECT_EQ(d.pools[0].action, Action::kUp) << d.pools[0].reason;
  EXPECT_EQ(d.pools[0].desired, 2);
  EXPECT_NE(d.pools[0].reason.find("for the TTFT SLO"), std::string::npos) << d.pools[0].reason;
  policy.Applied(Pool::kPrefill, 2, 0);
  high.prefill_workers = 2;
  d = policy.Decide(high, {2, 1}, 2);
  EXPECT_EQ(d.pools[0].action, Action::kHold) << d.pools[0].reason;
  EXPECT_NE(d.pools[0].reason.find("need 2 workers"), std::string::npos) << d.pools[0].reason;
  // Back at low load one worker meets the SLO again.
  Observation low = PrefillAt(0.5, 128);
  low.prefill_workers = 2;
  d = policy.Decide(low, {2, 1}, 4);
  EXPECT_EQ(d.pools[0].action, Action::kDown) << d.pools[0].reason;
  // Without the SLO in the options the same load keeps one worker.
  PolicyOptions no_slo = o;
  no_slo.ttft_slo_s = 0;
  Policy plain(no_slo);
  EXPECT_EQ(plain.Decide(PrefillAt(1.25, 128), {1, 1}, 0).pools[0].action, Action::kHold);
}

}  // namespace
}  // namespace tandem::planner
