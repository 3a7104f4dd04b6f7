#include "tandem/planner/decision_log.h"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include <nlohmann/json.hpp>

namespace tandem::planner {
namespace {

template <typename T>
nlohmann::json Opt(const std::optional<T>& v) {
  if (!v) return nullptr;
  if constexpr (std::is_floating_point_v<T>) {
    if (!std::isfinite(*v)) return nullptr;
  }
  return *v;
}

}  // namespace

std::string DecisionJson(const Decision& d, const Observation& obs, const std::string& read_error,
                         bool advisory, const std::array<Outcome, kPools>& outcomes,
                         const std::string& time) {
  nlohmann::json inputs = {
      {"prompt_tokens_per_s", Opt(obs.prompt_tokens_per_s)},
      {"generation_tokens_per_s", Opt(obs.generation_tokens_per_s)},
      {"requests_per_s", Opt(obs.requests_per_s)},
      {"prefill_tokens_per_worker_s", Opt(obs.prefill_tokens_per_worker_s)},
      {"prefill_backlog", Opt(obs.prefill_backlog)},
      {"prefill_queued_tokens", Opt(obs.prefill_queued_tokens)},
      {"decode_kv_occupancy", Opt(obs.decode_kv_occupancy)},
      {"decode_running", Opt(obs.decode_running)},
      {"ttft_attainment", Opt(obs.ttft_attainment)},
      {"itl_attainment", Opt(obs.itl_attainment)},
      {"prefill_workers", Opt(obs.prefill_workers)},
      {"decode_workers", Opt(obs.decode_workers)},
      {"missing", obs.missing},
  };
  nlohmann::json pools = nlohmann::json::array();
  for (int i = 0; i < kPools; ++i) {
    const PoolDecision& p = d.pools[i];
    pools.push_back({
        {"pool", PoolName(p.pool)},
        {"current", p.current},
        {"ready", Opt(p.ready)},
        {"desired", p.desired},
        {"action", ActionName(p.action)},
        {"feed_forward", Opt(p.feed_forward)},
        {"capacity_tokens_per_s", Opt(p.capacity_tokens_per_s)},
        {"reason", p.reason},
        {"applied", outcomes[i].applied},
        {"error",
         outcomes[i].error.empty() ? nlohmann::json(nullptr) : nlohmann::json(outcomes[i].error)},
    });
  }
  nlohmann::json line = {
      {"time", time},
      {"advisory", advisory},
      {"source", obs.source.empty() ? "none" : obs.source},
      {"read_error", read_error.empty() ? nlohmann::json(nullptr) : nlohmann::json(read_error)},
      {"inputs", inputs},
      {"pools", pools},
  };
  return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

StatusOr<std::unique_ptr<DecisionLog>> DecisionLog::Open(const std::string& path) {
  if (path.empty() || path == "-") {
    return std::unique_ptr<DecisionLog>(new DecisionLog(stderr, false));
  }
  std::FILE* f = std::fopen(path.c_str(), "a");
  if (f == nullptr) {
    return InvalidArgumentError("--decision-log {}: {}", path, std::strerror(errno));
  }
  return std::unique_ptr<DecisionLog>(new DecisionLog(f, true));
}

DecisionLog::~DecisionLog() {
  if (owned_) std::fclose(f_);
}

void DecisionLog::Write(const std::string& line) {
  std::lock_guard<std::mutex> lock(mu_);
  std::fputs(line.c_str(), f_);
  std::fputc('\n', f_);
  std::fflush(f_);
}

}  // namespace tandem::planner
