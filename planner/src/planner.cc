#include "tandem/planner/planner.h"

#include <algorithm>
#include <chrono>

#include <fmt/chrono.h>

#include "tandem/common/logging.h"

namespace tandem::planner {
namespace {

std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:03d}Z",
                     fmt::gmtime(std::chrono::system_clock::to_time_t(now)), static_cast<int>(ms));
}

double MonotonicSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Planner::Planner(PlannerOptions options, std::unique_ptr<MetricsSource> source,
                 std::unique_ptr<Actuator> actuator, PlannerMetrics* metrics, DecisionLog* log)
    : options_(std::move(options)),
      source_(std::move(source)),
      actuator_(std::move(actuator)),
      metrics_(metrics),
      log_(log),
      policy_(options_.policy) {
  metrics_->SetAdvisory(options_.advisory);
}

Decision Planner::Tick(double now_s) {
  std::string read_error;
  Observation obs;
  auto read = source_->Read(now_s);
  if (read.ok()) {
    obs = std::move(*read);
  } else {
    read_error = read.status().ToString();
    metrics_->CountReadFailure();
  }
  std::array<Outcome, kPools> outcomes;
  std::array<int, kPools> targets{};
  std::array<bool, kPools> known{};
  for (int i = 0; i < kPools; ++i) {
    const Pool pool = static_cast<Pool>(i);
    const PoolLimits& lim = i == 0 ? options_.policy.prefill : options_.policy.decode;
    auto got = actuator_->GetReplicas(pool);
    if (!got.ok()) {
      metrics_->CountActuationFailure(pool);
      outcomes[i].error = got.status().ToString();
      targets[i] = last_target_[i].value_or(obs.workers(pool).value_or(lim.min));
      continue;
    }
    if (got->has_value()) {
      targets[i] = **got;
      known[i] = true;
    } else if (auto ready = obs.workers(pool)) {
      // An actuator that holds no count yet (external, first interval) adopts what runs.
      targets[i] = std::clamp(*ready, lim.min, lim.max);
      known[i] = options_.advisory || actuator_->SetReplicas(pool, targets[i]).ok();
    } else {
      targets[i] = lim.min;
    }
  }
  Decision d = policy_.Decide(obs, targets, now_s);
  for (int i = 0; i < kPools; ++i) {
    PoolDecision& p = d.pools[i];
    if (!known[i]) {
      if (p.action != Action::kHold) {
        p.reason = "actuator's replica count unknown; would: " + std::string(ActionName(p.action)) +
                   " (" + p.reason + ")";
      }
      p.action = Action::kHold;
      p.desired = p.current;
    }
    if (p.action != Action::kHold && !options_.advisory) {
      Status s = actuator_->SetReplicas(p.pool, p.desired);
      if (s.ok()) {
        policy_.Applied(p.pool, p.desired, now_s);
        outcomes[i].applied = true;
      } else {
        metrics_->CountActuationFailure(p.pool);
        outcomes[i].error = s.ToString();
        TLOG_WARN("planner: {} pool: {} -> {} failed: {}", PoolName(p.pool), p.current, p.desired,
                  s.ToString());
      }
    }
    last_target_[i] = outcomes[i].applied ? p.desired : p.current;
    metrics_->CountDecision(p.pool, ActionName(p.action));
    metrics_->SetCurrent(p.pool, p.current);
    metrics_->SetReady(p.pool, p.ready);
  }
  metrics_->SetSource(obs.source.empty() ? "none" : obs.source);
  metrics_->SetObserved("prompt_tokens_per_s", obs.prompt_tokens_per_s);
  metrics_->SetObserved("generation_tokens_per_s", obs.generation_tokens_per_s);
  metrics_->SetObserved("requests_per_s", obs.requests_per_s);
  metrics_->SetObserved("prefill_tokens_per_worker_s", obs.prefill_tokens_per_worker_s);
  metrics_->SetObserved("prefill_backlog", obs.prefill_backlog);
  metrics_->SetObserved("prefill_queued_tokens", obs.prefill_queued_tokens);
  metrics_->SetObserved("decode_kv_occupancy", obs.decode_kv_occupancy);
  metrics_->SetObserved("decode_running", obs.decode_running);
  metrics_->SetObserved("ttft_attainment", obs.ttft_attainment);
  metrics_->SetObserved("itl_attainment", obs.itl_attainment);
  log_->Write(DecisionJson(d, obs, read_error, options_.advisory, outcomes, UtcNow()));
  return d;
}

void Planner::Run() {
  const auto interval = std::chrono::duration<double>(options_.interval_s);
  auto next = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    Tick(MonotonicSeconds());
    lock.lock();
    next += std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval);
    cv_.wait_until(lock, next, [this] { return stop_; });
  }
}

void Planner::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

}  // namespace tandem::planner
