// The planner's policy: from one Observation and the replica counts the actuator holds, decide
// each pool's desired replicas. Pure: no I/O and no clock (the caller passes `now_s`), so tests
// replay recorded traces tick by tick.
//
// Per pool, every interval:
//   1. Hold while an action is in flight (the router's workers in rotation differ from the
//      target; for at most `action_timeout_s`), or while an input the pool needs is missing.
//   2. Feed-forward size: demand tokens/s / (per-worker capacity x target_utilization), rounded
//      up. Prefill capacity is measured (prompt tokens per second of prefill compute); decode
//      capacity is the per-worker throughput last seen while the ITL SLO was missed (the pool was
//      saturated), or the configured value. Prefill also takes the queueing size (queueing.h):
//      the fewest workers whose modelled wait leaves `slo_attainment` of requests within the
//      TTFT SLO at the admitted request rate and mean prompt compute time.
//   3. Reactive guard (adds one worker): prefill: TTFT attainment under target while prefill is
//      loaded (backlog, queued tokens or utilization; a TTFT miss with an idle prefill pool is
//      decode's), backlog per worker above its bound, or queued prompt tokens per worker worth
//      more than `prefill_queue_s_per_worker` of its capacity; decode: ITL attainment under target,
//      or KV occupancy above `kv_high`.
//   4. Scale up at once to max(feed-forward, guard). Scale down by one, only after every check
//      of `scale_down_window_s` found that one fewer worker still meets the SLO (utilization with
//      n-1 workers under target_utilization x scale_down_headroom, KV occupancy with n-1 under
//      kv_target, attainment met, the queueing size at demand / scale_down_headroom at most
//      n-1), and never within that window of the pool's last change, and
//      never from a partial view (source other than "prometheus"), and never to a size that
//      was seen missing the SLO at this demand (below).
//   5. Clamp to [min, max].
// Memory of sizes too small: when a reactive guard grows a pool (the SLO or its queue said n
// workers are not enough), the demand rate at that moment is remembered as a ceiling for n
// workers, and for fewer. A later scale-down to k workers needs the demand under the lowest
// ceiling of any size >= k times scale_down_headroom, for `too_small_memory_s`. Measured or
// configured capacities are often optimistic (queueing, batching, a noisy machine): without
// this memory a pool at constant load near such a boundary goes down after every window and
// back up at its first SLO miss.
// Advisory mode is the caller's business: the policy decides the same either way.
//
// Thread safety: none; one planner loop owns a Policy.
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>

#include "tandem/planner/observation.h"

namespace tandem::planner {

struct PoolLimits {
  int min = 1;  // Default: 1.
  int max = 8;  // Default: 8.
};

struct PolicyOptions {
  PoolLimits prefill;
  PoolLimits decode;
  // Share of requests that must meet each SLO. Default: 0.95.
  double slo_attainment = 0.95;
  // Feed-forward sizing aims each worker at this share of its capacity. Default: 0.8.
  double target_utilization = 0.8;
  // Scale down only if n-1 workers would run at most this share of target_utilization.
  // Default: 0.9 (hysteresis against flapping at a boundary).
  double scale_down_headroom = 0.9;
  // Prefill requests queued per worker above which prefill grows. Default: 4.
  double prefill_backlog_per_worker = 4;
  // Seconds of queued prompt tokens per worker (tandem_prefill_queued_tokens / capacity) above
  // which prefill grows; n-1 workers must stay under it to scale down. Default: 1.
  double prefill_queue_s_per_worker = 1;
  // Decode KV occupancy above which decode grows; the occupancy n-1 workers must stay under.
  // Defaults: 0.85, 0.7.
  double kv_high = 0.85;
  double kv_target = 0.7;
  // The TTFT SLO the prefill queueing size aims at; 0 = no queueing size. Default: 1 s.
  double ttft_slo_s = 1.0;
  // Squared coefficient of variation of prompt compute times in the queueing size: 0 when
  // prompts are all one size, 1 (exponential-like, the cautious choice) when they vary widely.
  // Default: 1.
  double prefill_service_scv = 1.0;
  // Per-worker capacity in tokens/s; 0 = measure. Defaults: 0.
  double prefill_capacity_tokens_per_s = 0;
  double decode_capacity_tokens_per_s = 0;
  // A scale-down needs this long of "one fewer still meets the SLO", and this long since the
  // pool's last change. Default: 300 s.
  double scale_down_window_s = 300;
  // An action not visible on the router after this long stops holding the pool. Default: 600 s.
  double action_timeout_s = 600;
  // How long a size seen missing the SLO at some demand blocks scale-downs to it (and to fewer
  // workers) at that demand; 0 = forget at once. Default: 3600 s.
  double too_small_memory_s = 3600;
};

enum class Action { kHold, kUp, kDown };
const char* ActionName(Action a);

struct PoolDecision {
  Pool pool = Pool::kPrefill;
  int current = 0;           // the target the actuator holds
  std::optional<int> ready;  // workers in rotation
  int desired = 0;
  Action action = Action::kHold;
  std::optional<int> feed_forward;
  std::optional<double> capacity_tokens_per_s;
  std::string reason;
};

struct Decision {
  double now_s = 0;
  std::array<PoolDecision, kPools> pools;
};

class Policy {
 public:
  explicit Policy(PolicyOptions options);

  // `targets[p]`: the replica count the actuator holds for pool p now.
  Decision Decide(const Observation& obs, const std::array<int, kPools>& targets, double now_s);

  // Tell the policy the actuator applied `replicas` to `pool` at now_s (starts the in-flight
  // hold and the scale-down cooldown). Not called in advisory mode or when actuation failed.
  void Applied(Pool pool, int replicas, double now_s);

  const PolicyOptions& options() const { return options_; }

 private:
  struct TooSmall {
    double rate = 0;
    double at_s = 0;
  };
  struct PoolState {
    std::optional<double> last_change_s;
    std::optional<double> in_flight_since_s;
    std::optional<int> in_flight_target;
    std::optional<double> down_ok_since_s;
    std::optional<double> learned_capacity;  // decode: tokens/s per worker at saturation
    // Workers -> the lowest demand (tokens/s) at which that many missed the SLO, and when.
    std::map<int, TooSmall> too_small;
  };
  PoolDecision DecidePrefill(const Observation& obs, int current, double now_s);
  PoolDecision DecideDecode(const Observation& obs, int current, double now_s);
  // Remember that `workers` missed the SLO at demand `rate`.
  static void RememberTooSmall(PoolState& st, int workers, double rate, double now_s);
  // The lowest demand at which `workers` or more were seen missing the SLO within the memory.
  std::optional<TooSmall> TooSmallCeiling(PoolState& st, int workers, double now_s) const;
  // Steps 1, 4 and 5 around a pool's sizing.
  PoolDecision Finish(PoolDecision d, PoolState& st, const PoolLimits& lim, bool partial_view,
                      std::optional<int> grow_to, bool one_fewer_ok, const std::string& why,
                      double now_s);

  PolicyOptions options_;
  std::array<PoolState, kPools> state_;
};

}  // namespace tandem::planner
