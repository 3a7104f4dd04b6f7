#include "tandem/planner/queueing.h"

#include <algorithm>
#include <cmath>

namespace tandem::planner {

double ErlangC(int n, double a) {
  if (n <= 0 || a >= n) return 1.0;
  if (a <= 0) return 0.0;
  // Erlang B by its recurrence (stable for any n), then C from B.
  double b = 1.0;
  for (int k = 1; k <= n; ++k) b = a * b / (k + a * b);
  return n * b / (n - a * (1.0 - b));
}

double WaitTail(int n, double lambda, double service_s, double scv, double t) {
  if (lambda <= 0 || service_s <= 0) return 0.0;
  const double mu = 1.0 / service_s;
  const double slack = n * mu - lambda;
  if (n <= 0 || slack <= 0) return 1.0;
  const double f = std::max((1.0 + std::max(scv, 0.0)) / 2.0, 0.05);
  return ErlangC(n, lambda / mu) * std::exp(-slack * std::max(t, 0.0) / f);
}

std::optional<int> WorkersForTtft(double lambda, double service_s, double scv, double ttft_slo_s,
                                  double attainment, int max_workers) {
  if (lambda <= 0 || service_s <= 0 || ttft_slo_s <= service_s) return std::nullopt;
  const double budget = ttft_slo_s - service_s;
  const double miss = std::max(1.0 - attainment, 1e-6);
  for (int n = std::max(1, static_cast<int>(std::floor(lambda * service_s)) + 1); n <= max_workers;
       ++n) {
    if (WaitTail(n, lambda, service_s, scv, budget) <= miss) return n;
  }
  return max_workers + 1;
}

}  // namespace tandem::planner
