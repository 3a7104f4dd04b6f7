// Prefill pool sizing from a queueing model, so that the feed-forward size answers "how many
// workers keep TTFT within the SLO for the required share of requests" rather than only "how
// many keep utilization under a target". At 50% utilization one worker can still miss a TTFT
// SLO a few prompt-compute times long: requests wait behind each other.
//
// Model: Poisson arrivals at `lambda` requests/s, `n` identical workers each computing one
// prompt in `service_s` seconds on average (M/G/n). The chance a request waits at all is Erlang
// C; its wait beyond that is taken as exponential with rate (n mu - lambda) / f, where
// f = (1 + scv) / 2 is Kingman's variability factor for Poisson arrivals and service times of
// squared coefficient of variation `scv` (0: prompts of one size; 1: exponential-like):
//   P(wait > t) ~= C(n, lambda / mu) * exp(-(n mu - lambda) t / f),   mu = 1 / service_s.
// Exact for M/M/n (scv = 1); for M/D/1 it agrees with the exact tail's decay to within a few
// percent at the loads a TTFT SLO allows.
#pragma once

#include <optional>

namespace tandem::planner {

// Erlang C: the chance an arrival waits, with `n` servers and offered load `a` = lambda / mu
// (Erlangs). 1 when a >= n.
double ErlangC(int n, double a);

// P(wait > t) under the model above; 1 when the pool is overloaded (lambda >= n mu).
double WaitTail(int n, double lambda, double service_s, double scv, double t);

// The fewest workers (at most `max_workers`) for which P(wait > ttft_slo_s - service_s) <=
// 1 - attainment. nullopt when the SLO leaves no time to wait (service_s >= ttft_slo_s) or the
// inputs are not positive; `max_workers` + 1 when even that many miss it.
std::optional<int> WorkersForTtft(double lambda, double service_s, double scv, double ttft_slo_s,
                                  double attainment, int max_workers);

}  // namespace tandem::planner
