#include "tandem/planner/process_actuator.h"

#include <signal.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

#include "tandem/common/logging.h"
#include "tandem/planner/exposition.h"
#include "url.h"

namespace tandem::planner {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

ProcessActuator::ProcessActuator(ProcessActuatorOptions options) : options_(std::move(options)) {}

ProcessActuator::~ProcessActuator() { StopAll(options_.stop_timeout); }

std::string ProcessActuator::Describe() const { return "process (local worker processes)"; }

std::string ProcessActuator::Name(const Worker& w) const {
  return fmt::format("{} worker {} (pid {})", PoolName(w.pool), w.index, w.process->pid());
}

StatusOr<std::optional<int>> ProcessActuator::GetReplicas(Pool pool) {
  std::lock_guard<std::mutex> lock(mu_);
  return std::optional<int>(
      static_cast<int>(std::count_if(workers_.begin(), workers_.end(), [&](const Worker& w) {
        return w.pool == pool && !w.draining && !w.process->exited();
      })));
}

Status ProcessActuator::SetReplicas(Pool pool, int replicas) {
  if (replicas < 0) return InvalidArgumentError("replicas: {} is negative", replicas);
  std::vector<std::pair<int, std::string>> candidates;  // (worker index, metrics URL)
  int live = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Worker& w : workers_) {
      if (w.pool != pool || w.draining || w.process->exited()) continue;
      ++live;
      // Only serving workers are drained: a starting one has no requests and no load to read,
      // and it is cheaper to let it finish starting than to race its registration.
      if (w.process->started()) candidates.emplace_back(w.index, w.process->metrics_url());
    }
    for (; live < replicas; ++live) {
      const int index = next_index_[static_cast<int>(pool)]++;
      auto child = ChildProcess::Spawn(PoolName(pool), options_.argv(pool, index));
      if (!child.ok()) return child.status();
      Worker w;
      w.pool = pool;
      w.index = index;
      w.process = std::move(*child);
      w.started_at = Clock::now();
      TLOG_INFO("planner: started {}", Name(w));
      workers_.push_back(std::move(w));
    }
  }
  if (live <= replicas) return Status::Ok();
  // Down: read every candidate's load outside the lock (scrapes are bounded), then drain the
  // least loaded ones.
  struct Scored {
    int index;
    double load;
  };
  std::vector<Scored> scored;
  for (const auto& [index, url] : candidates) {
    const auto load = url.empty() ? std::nullopt : Load(url);
    scored.push_back({index, load.value_or(std::numeric_limits<double>::infinity())});
  }
  // Least loaded first; on a tie the newest.
  std::sort(scored.begin(), scored.end(), [](const Scored& a, const Scored& b) {
    return a.load != b.load ? a.load < b.load : a.index > b.index;
  });
  const int to_drain = live - replicas;
  if (static_cast<int>(scored.size()) < to_drain) {
    return UnavailableError("{} pool: {} of its {} workers are still starting; cannot drain {}",
                            PoolName(pool), live - static_cast<int>(scored.size()), live, to_drain);
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (int k = 0; k < to_drain; ++k) {
    auto it = std::find_if(workers_.begin(), workers_.end(), [&](const Worker& w) {
      return w.pool == pool && w.index == scored[k].index;
    });
    if (it == workers_.end() || it->process->exited()) continue;  // reaped meanwhile
    Worker& w = *it;
    w.draining = true;
    w.drain_started_at = Clock::now();
    w.process->Signal(SIGTERM);
    TLOG_INFO("planner: draining {} ({} requests running or waiting)", Name(w),
              std::isinf(scored[k].load) ? std::string("unknown")
                                         : fmt::format("{:.0f}", scored[k].load));
  }
  return Status::Ok();
}

std::optional<double> ProcessActuator::Load(const std::string& metrics_url) const {
  auto [origin, path] = SplitUrl(metrics_url);
  httplib::Client cli(origin);
  const auto sec = static_cast<time_t>(std::max(1.0, options_.scrape_timeout_s));
  cli.set_connection_timeout(sec);
  cli.set_read_timeout(sec);
  if (!options_.scrape_ca_file.empty()) cli.set_ca_cert_path(options_.scrape_ca_file.c_str());
  auto res = cli.Get(path.empty() ? "/metrics" : path);
  if (!res || res->status != 200) return std::nullopt;
  auto samples = ParseExposition(res->body);
  if (!samples.ok()) return std::nullopt;
  const auto running = SumSamples(*samples, "tandem_requests_running", {});
  const auto waiting = SumSamples(*samples, "tandem_requests_waiting", {});
  if (!running && !waiting) return std::nullopt;
  return running.value_or(0) + waiting.value_or(0);
}

std::vector<std::string> ProcessActuator::Poll() {
  std::lock_guard<std::mutex> lock(mu_);
  return PollLocked();
}

std::vector<std::string> ProcessActuator::PollLocked() {
  std::vector<std::string> died;
  const auto now = Clock::now();
  for (auto it = workers_.begin(); it != workers_.end();) {
    Worker& w = *it;
    if (!w.process->started() && !w.draining && !w.failed) {
      auto up = w.process->ReadEndpoints(std::chrono::milliseconds(0));
      if (up.ok() && *up) {
        TLOG_INFO("planner: {} serves at {} after {:.1f} s", Name(w), w.process->grpc_address(),
                  Seconds(now - w.started_at));
      } else if (up.ok() && now - w.started_at > options_.start_timeout) {
        w.process->Signal(SIGKILL);
        w.failed = true;
        died.push_back(fmt::format("{} did not start within {} ms; killed", Name(w),
                                   options_.start_timeout.count()));
      }
    }
    if (w.draining && !w.process->exited() && now - w.drain_started_at > options_.stop_timeout) {
      TLOG_WARN("planner: {} still draining after {} ms; killing it", Name(w),
                options_.stop_timeout.count());
      w.process->Signal(SIGKILL);
    }
    if (!w.process->Poll()) {
      ++it;
      continue;
    }
    if (w.draining) {
      ++drained_;
      if (w.process->exited_cleanly()) ++drained_cleanly_;
      TLOG_INFO("planner: {} drained and stopped ({}) after {:.1f} s", Name(w),
                w.process->DescribeExit(), Seconds(now - w.drain_started_at));
    } else if (!w.failed) {
      died.push_back(fmt::format("{} {}", Name(w), w.process->DescribeExit()));
    }
    it = workers_.erase(it);
  }
  return died;
}

Status ProcessActuator::WaitStarted(Clock::time_point deadline) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto died = PollLocked();
      if (!died.empty()) return UnavailableError("{}", died.front());
      bool all = true;
      for (auto& w : workers_) {
        if (w.draining || w.process->started()) continue;
        all = false;
        if (Clock::now() >= deadline) {
          return DeadlineExceededError("{} printed no endpoint line in time", Name(w));
        }
      }
      if (all) return Status::Ok();
    }
    // Woken by the next line any starting worker prints, or after a short while to reap.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::array<std::vector<std::string>, kPools> ProcessActuator::MetricsUrls() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::array<std::vector<std::string>, kPools> out;
  for (const auto& w : workers_) {
    if (w.draining || !w.process->started() || w.process->metrics_url().empty()) continue;
    out[static_cast<int>(w.pool)].push_back(w.process->metrics_url());
  }
  return out;
}

std::vector<std::string> ProcessActuator::EndpointLines() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (Pool pool : {Pool::kPrefill, Pool::kDecode}) {
    for (const auto& w : workers_) {
      if (w.pool != pool || w.draining || !w.process->started()) continue;
      out.insert(out.end(), w.process->endpoint_lines().begin(), w.process->endpoint_lines().end());
    }
  }
  return out;
}

int ProcessActuator::drained() const {
  std::lock_guard<std::mutex> lock(mu_);
  return drained_;
}

int ProcessActuator::drained_cleanly() const {
  std::lock_guard<std::mutex> lock(mu_);
  return drained_cleanly_;
}

int ProcessActuator::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(
      std::count_if(workers_.begin(), workers_.end(), [](const Worker& w) { return w.draining; }));
}

void ProcessActuator::StopAll(std::chrono::milliseconds timeout) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& w : workers_) {
    if (w.process->exited()) continue;
    if (!w.draining) {
      w.draining = true;
      w.drain_started_at = Clock::now();
    }
    w.process->Signal(SIGTERM);
  }
  const auto deadline = Clock::now() + timeout;
  auto all_exited = [&] {
    bool all = true;
    for (auto& w : workers_) all = w.process->Poll() && all;
    return all;
  };
  while (!all_exited() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (auto& w : workers_) {
    if (w.process->Poll()) continue;
    TLOG_WARN("planner: {} did not stop in time; killing it", Name(w));
    w.process->Signal(SIGKILL);
    while (!w.process->Poll()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  workers_.clear();
}

}  // namespace tandem::planner
