#include "tandem/planner/policy.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "tandem/planner/queueing.h"

namespace tandem::planner {
namespace {

std::string Num(std::optional<double> v) { return v ? fmt::format("{:.3g}", *v) : "n/a"; }

std::string Join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

}  // namespace

const char* ActionName(Action a) {
  switch (a) {
    case Action::kHold:
      return "hold";
    case Action::kUp:
      return "up";
    case Action::kDown:
      return "down";
  }
  return "hold";
}

Policy::Policy(PolicyOptions options) : options_(std::move(options)) {}

void Policy::Applied(Pool pool, int replicas, double now_s) {
  PoolState& st = state_[static_cast<int>(pool)];
  st.last_change_s = now_s;
  st.in_flight_since_s = now_s;
  st.in_flight_target = replicas;
  st.down_ok_since_s.reset();
}

Decision Policy::Decide(const Observation& obs, const std::array<int, kPools>& targets,
                        double now_s) {
  Decision out;
  out.now_s = now_s;
  for (int i = 0; i < kPools; ++i) {
    const Pool pool = static_cast<Pool>(i);
    PoolState& st = state_[i];
    PoolDecision hold;
    hold.pool = pool;
    hold.current = hold.desired = targets[i];
    hold.ready = obs.workers(pool);
    // 1. Nothing read, a failed read, or an action still on its way: hold.
    if (obs.source.empty()) {
      hold.reason = "no metrics (Prometheus and the router unreachable)";
      st.down_ok_since_s.reset();
      out.pools[i] = hold;
      continue;
    }
    if (!obs.missing.empty()) {
      hold.reason = "metrics missing: " + Join(obs.missing);
      st.down_ok_since_s.reset();
      out.pools[i] = hold;
      continue;
    }
    if (!hold.ready) {
      hold.reason = fmt::format("workers in rotation unknown (tandem_workers{{kind=\"{}\"}})",
                                PoolName(pool));
      st.down_ok_since_s.reset();
      out.pools[i] = hold;
      continue;
    }
    std::string note;
    if (st.in_flight_target) {
      if (*hold.ready == *st.in_flight_target) {
        st.in_flight_target.reset();
        st.in_flight_since_s.reset();
      } else if (now_s - *st.in_flight_since_s < options_.action_timeout_s) {
        hold.reason = fmt::format("action in flight: {} of {} in rotation", *hold.ready,
                                  *st.in_flight_target);
        st.down_ok_since_s.reset();
        out.pools[i] = hold;
        continue;
      } else {
        note = fmt::format("; action to {} not seen in rotation after {:.0f} s (now {})",
                           *st.in_flight_target, now_s - *st.in_flight_since_s, *hold.ready);
        st.in_flight_target.reset();
        st.in_flight_since_s.reset();
      }
    }
    out.pools[i] = pool == Pool::kPrefill ? DecidePrefill(obs, targets[i], now_s)
                                          : DecideDecode(obs, targets[i], now_s);
    out.pools[i].ready = hold.ready;
    out.pools[i].reason += note;
  }
  return out;
}

PoolDecision Policy::DecidePrefill(const Observation& obs, int n, double now_s) {
  const PolicyOptions& o = options_;
  PoolState& st = state_[static_cast<int>(Pool::kPrefill)];
  PoolDecision d;
  d.pool = Pool::kPrefill;
  d.current = d.desired = n;
  const bool partial = obs.partial_view();
  if (!obs.prompt_tokens_per_s) {
    d.reason = "prompt token rate unknown";
    st.down_ok_since_s.reset();
    return d;
  }
  const double rate = *obs.prompt_tokens_per_s;
  if (obs.prefill_tokens_per_worker_s && *obs.prefill_tokens_per_worker_s > 0) {
    st.learned_capacity = *obs.prefill_tokens_per_worker_s;
  }
  std::optional<double> cap = st.learned_capacity;
  if (o.prefill_capacity_tokens_per_s > 0) cap = o.prefill_capacity_tokens_per_s;
  d.capacity_tokens_per_s = cap;
  const double backlog = obs.prefill_backlog.value_or(0);
  const double queued = obs.prefill_queued_tokens.value_or(0);
  // Seconds of queued prompt work per worker, were there `k` workers.
  auto queue_s = [&](int k) -> std::optional<double> {
    if (!cap || !obs.prefill_queued_tokens) return std::nullopt;
    return queued / (std::max(k, 1) * *cap);
  };
  // The queueing size for `load` x the admitted request rate (nullopt: not computable).
  const std::optional<double> req_rate = obs.requests_per_s;
  auto queueing = [&](double load) -> std::optional<int> {
    if (o.ttft_slo_s <= 0 || !cap || !req_rate || *req_rate <= 0 || rate <= 0) return std::nullopt;
    const double service_s = rate / *req_rate / *cap;  // mean prompt compute time
    return WorkersForTtft(*req_rate * load, service_s, o.prefill_service_scv, o.ttft_slo_s,
                          o.slo_attainment, o.prefill.max);
  };
  const std::optional<int> by_queue = queueing(1.0);
  if (rate <= 0 && backlog <= 0 && queued <= 0) {
    d.feed_forward = 0;
  } else if (cap) {
    d.feed_forward = static_cast<int>(std::ceil(rate / (*cap * o.target_utilization)));
    if (by_queue) d.feed_forward = std::max(*d.feed_forward, *by_queue);
  }
  // Utilization of the current workers (unknown without a measured capacity).
  const bool utilized = cap && n > 0 && rate / (n * *cap) >= o.target_utilization;
  const double per_worker = backlog / std::max(n, 1);
  const std::optional<double> queue_now = queue_s(n);
  const bool loaded =
      per_worker >= 1 || utilized || (queue_now && *queue_now >= o.prefill_queue_s_per_worker);
  const bool ttft_miss = obs.ttft_attainment && *obs.ttft_attainment < o.slo_attainment;

  std::optional<int> grow;
  std::vector<std::string> why;
  if (d.feed_forward && *d.feed_forward > n) {
    grow = *d.feed_forward;
    why.push_back(fmt::format(
        "feed-forward {} ({} prompt tok/s, {} tok/s per worker{})", *d.feed_forward, Num(rate),
        Num(cap),
        by_queue ? fmt::format("; {} req/s need {} for the TTFT SLO", Num(req_rate), *by_queue)
                 : ""));
  }
  if (per_worker > o.prefill_backlog_per_worker) {
    grow = std::max(grow.value_or(0), n + 1);
    why.push_back(fmt::format("backlog {:.3g} per worker > {:.3g}", per_worker,
                              o.prefill_backlog_per_worker));
  }
  if (queue_now && *queue_now > o.prefill_queue_s_per_worker) {
    grow = std::max(grow.value_or(0), n + 1);
    why.push_back(fmt::format("queued prompt tokens {:.3g} s per worker > {:.3g}", *queue_now,
                              o.prefill_queue_s_per_worker));
  }
  if (ttft_miss && loaded) {
    grow = std::max(grow.value_or(0), n + 1);
    why.push_back(fmt::format("TTFT attainment {} < {} with prefill loaded",
                              Num(obs.ttft_attainment), o.slo_attainment));
  }
  // A reactive guard fired: n workers were not enough for this demand.
  if (per_worker > o.prefill_backlog_per_worker ||
      (queue_now && *queue_now > o.prefill_queue_s_per_worker) || (ttft_miss && loaded)) {
    RememberTooSmall(st, n, rate, now_s);
  }
  // Would n-1 workers still meet the SLO?
  bool one_fewer = false;
  std::string down_why;
  if (n <= 1) {
    down_why = "one worker";
  } else if (ttft_miss) {
    down_why = fmt::format("TTFT attainment {} < {}{}", Num(obs.ttft_attainment), o.slo_attainment,
                           loaded ? "" : " (prefill not loaded: decode's)");
  } else if (backlog / (n - 1) >= 1) {
    down_why = fmt::format("backlog {:.3g} for {} workers", backlog, n - 1);
  } else if ((rate > 0 || queued > 0) && !cap) {
    down_why = "prefill capacity not measured yet";
  } else if (auto q = queue_s(n - 1);
             q && *q > o.prefill_queue_s_per_worker * o.scale_down_headroom) {
    down_why = fmt::format("queued prompt tokens {:.3g} s per worker for {} workers", *q, n - 1);
  } else if (rate > 0 && rate / ((n - 1) * *cap) > o.target_utilization * o.scale_down_headroom) {
    down_why =
        fmt::format("{} workers would run at {:.2f} of capacity", n - 1, rate / ((n - 1) * *cap));
  } else if (auto q = queueing(1.0 / o.scale_down_headroom); q && *q > n - 1) {
    down_why = fmt::format("{} req/s (with headroom {:.3g}) need {} workers for the TTFT SLO",
                           Num(req_rate), o.scale_down_headroom, *q);
  } else if (auto c = TooSmallCeiling(st, n - 1, now_s);
             c && rate > c->rate * o.scale_down_headroom) {
    down_why = fmt::format("{} workers missed the SLO at {} prompt tok/s {:.0f} s ago (now {})",
                           n - 1, Num(c->rate), now_s - c->at_s, Num(rate));
  } else {
    one_fewer = true;
    down_why = fmt::format("{} workers meet the SLO ({} prompt tok/s, backlog {:.3g})", n - 1,
                           Num(rate), backlog);
  }
  return Finish(d, st, o.prefill, partial, grow, one_fewer, why.empty() ? down_why : Join(why),
                now_s);
}

PoolDecision Policy::DecideDecode(const Observation& obs, int n, double now_s) {
  const PolicyOptions& o = options_;
  PoolState& st = state_[static_cast<int>(Pool::kDecode)];
  PoolDecision d;
  d.pool = Pool::kDecode;
  d.current = d.desired = n;
  const bool partial = obs.partial_view();
  if (!obs.generation_tokens_per_s) {
    d.reason = "generation token rate unknown";
    st.down_ok_since_s.reset();
    return d;
  }
  const double gen = *obs.generation_tokens_per_s;
  const bool itl_miss = obs.itl_attainment && *obs.itl_attainment < o.slo_attainment;
  const int ready = obs.decode_workers.value_or(n);
  // A pool that misses the ITL SLO is saturated: what each worker delivers is its capacity.
  if (itl_miss && gen > 0 && ready > 0) st.learned_capacity = gen / ready;
  std::optional<double> cap = st.learned_capacity;
  if (o.decode_capacity_tokens_per_s > 0) cap = o.decode_capacity_tokens_per_s;
  d.capacity_tokens_per_s = cap;
  const double running = obs.decode_running.value_or(0);
  if (gen <= 0 && running <= 0) {
    d.feed_forward = 0;
  } else if (cap) {
    d.feed_forward = static_cast<int>(std::ceil(gen / (*cap * o.target_utilization)));
  }
  const std::optional<double> occ = obs.decode_kv_occupancy;

  std::optional<int> grow;
  std::vector<std::string> why;
  if (d.feed_forward && *d.feed_forward > n) {
    grow = *d.feed_forward;
    why.push_back(fmt::format("feed-forward {} ({} gen tok/s, {} tok/s per worker)",
                              *d.feed_forward, Num(gen), Num(cap)));
  }
  if (occ && *occ > o.kv_high) {
    const int kv_size = static_cast<int>(std::ceil(n * *occ / o.kv_target));
    grow = std::max({grow.value_or(0), n + 1, kv_size});
    why.push_back(fmt::format("KV occupancy {:.2f} > {:.2f}", *occ, o.kv_high));
  }
  if (itl_miss) {
    grow = std::max(grow.value_or(0), n + 1);
    why.push_back(fmt::format("ITL attainment {} < {}", Num(obs.itl_attainment), o.slo_attainment));
  }
  if (itl_miss) RememberTooSmall(st, n, gen, now_s);
  bool one_fewer = false;
  std::string down_why;
  if (n <= 1) {
    down_why = "one worker";
  } else if (itl_miss) {
    down_why = fmt::format("ITL attainment {} < {}", Num(obs.itl_attainment), o.slo_attainment);
  } else if (occ && *occ * n / (n - 1) > o.kv_target) {
    down_why = fmt::format("{} workers would hold KV occupancy {:.2f}", n - 1, *occ * n / (n - 1));
  } else if (gen > 0 && !cap) {
    down_why = "decode capacity not measured yet (no saturated interval seen)";
  } else if (gen > 0 && gen / ((n - 1) * *cap) > o.target_utilization * o.scale_down_headroom) {
    down_why =
        fmt::format("{} workers would run at {:.2f} of capacity", n - 1, gen / ((n - 1) * *cap));
  } else if (auto c = TooSmallCeiling(st, n - 1, now_s);
             c && gen > c->rate * o.scale_down_headroom) {
    down_why = fmt::format("{} workers missed the ITL SLO at {} gen tok/s {:.0f} s ago (now {})",
                           n - 1, Num(c->rate), now_s - c->at_s, Num(gen));
  } else {
    one_fewer = true;
    down_why = fmt::format("{} workers meet the SLO ({} gen tok/s, KV occupancy {})", n - 1,
                           Num(gen), Num(occ));
  }
  return Finish(d, st, o.decode, partial, grow, one_fewer, why.empty() ? down_why : Join(why),
                now_s);
}

void Policy::RememberTooSmall(PoolState& st, int workers, double rate, double now_s) {
  if (workers <= 0 || rate <= 0) return;
  auto [it, added] = st.too_small.try_emplace(workers, TooSmall{rate, now_s});
  // The lowest demand seen failing is the tightest ceiling; refresh its time either way.
  if (!added) it->second = {std::min(it->second.rate, rate), now_s};
}

std::optional<Policy::TooSmall> Policy::TooSmallCeiling(PoolState& st, int workers,
                                                        double now_s) const {
  std::optional<TooSmall> low;
  for (auto it = st.too_small.begin(); it != st.too_small.end();) {
    if (now_s - it->second.at_s > options_.too_small_memory_s) {
      it = st.too_small.erase(it);
      continue;
    }
    // More workers missing at a demand means fewer miss there too.
    if (it->first >= workers && (!low || it->second.rate < low->rate)) low = it->second;
    ++it;
  }
  return low;
}

PoolDecision Policy::Finish(PoolDecision d, PoolState& st, const PoolLimits& lim, bool partial,
                            std::optional<int> grow, bool one_fewer, const std::string& why,
                            double now_s) {
  const int n = d.current;
  d.reason = why;
  if (n < lim.min) {
    d.desired = std::clamp(std::max(grow.value_or(lim.min), lim.min), lim.min, lim.max);
    d.action = Action::kUp;
    d.reason = fmt::format("below min {}; {}", lim.min, why);
    st.down_ok_since_s.reset();
    return d;
  }
  if (n > lim.max) {
    d.desired = lim.max;
    d.action = Action::kDown;
    d.reason = fmt::format("above max {}", lim.max);
    st.down_ok_since_s.reset();
    return d;
  }
  if (grow && *grow > n) {
    st.down_ok_since_s.reset();
    d.desired = std::min(*grow, lim.max);
    if (d.desired > n) {
      d.action = Action::kUp;
    } else {
      d.reason = fmt::format("at max {}; {}", lim.max, why);
    }
    return d;
  }
  if (!one_fewer || n <= lim.min) {
    st.down_ok_since_s.reset();
    if (one_fewer) d.reason = fmt::format("at min {}", lim.min);
    return d;
  }
  if (partial) {
    st.down_ok_since_s.reset();
    d.reason = "partial view (router /metrics only, Prometheus unreachable): no scale-down";
    return d;
  }
  if (!st.down_ok_since_s) st.down_ok_since_s = now_s;
  const double ok_for = now_s - *st.down_ok_since_s;
  const double since_change = st.last_change_s ? now_s - *st.last_change_s : 1e300;
  if (ok_for >= options_.scale_down_window_s && since_change >= options_.scale_down_window_s) {
    d.desired = n - 1;
    d.action = Action::kDown;
    d.reason = fmt::format("{} for {:.0f} s", why, ok_for);
    st.down_ok_since_s.reset();
  } else {
    d.reason = fmt::format("scale-down pending ({:.0f} of {:.0f} s): {}",
                           std::min(ok_for, since_change), options_.scale_down_window_s, why);
  }
  return d;
}

}  // namespace tandem::planner
