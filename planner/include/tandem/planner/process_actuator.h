// The process actuator of `tandem serve --autoscale`: the prefill and decode pools are worker
// processes on this machine, children of the caller.
//   up    starts workers (the command line comes from the caller: same flags as the others, a new
//         --worker-id, port 0); each registers with the router and prints its endpoint lines;
//   down  drains the least-loaded worker of the pool (fewest requests running + waiting on its
//         /metrics; the newest on a tie or without metrics): SIGTERM, on which a worker turns
//         NOT_SERVING, tells the router it drains (no new work), lets its in-flight requests
//         finish within its --drain-ms, and exits. Past `stop_timeout` it gets SIGKILL.
// A draining worker no longer counts in GetReplicas; Poll reaps it once it has exited.
//
// Thread safety: every method may be called from any thread (the planner loop acts, the owner
// polls); an internal mutex guards the workers.
#pragma once

#include <array>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "tandem/common/child_process.h"
#include "tandem/planner/actuator.h"

namespace tandem::planner {

struct ProcessActuatorOptions {
  // Command line of a new worker of `pool`; `index` numbers that pool's workers from 0 in start
  // order, never reused (for --worker-id). Required.
  std::function<std::vector<std::string>(Pool pool, int index)> argv;
  // Longest a new worker may take to print its "<role> grpc" line. Default: 120 s.
  std::chrono::milliseconds start_timeout{120000};
  // A drained worker that has not exited this long after SIGTERM gets SIGKILL. Default: 45 s
  // (the workers' default drain budget of 30 s plus their cut grace).
  std::chrono::milliseconds stop_timeout{45000};
  // Bound on one worker /metrics scrape when choosing which worker to drain. Default: 5 s.
  double scrape_timeout_s = 5;
  // PEM CA bundle that https:// worker /metrics URLs are verified against. Default: "" (the
  // system's CAs).
  std::string scrape_ca_file;
};

class ProcessActuator : public Actuator {
 public:
  explicit ProcessActuator(ProcessActuatorOptions options);
  // Stops every worker (StopAll with `stop_timeout`).
  ~ProcessActuator() override;

  // Workers of the pool started and not draining (the ones still starting count).
  StatusOr<std::optional<int>> GetReplicas(Pool pool) override;
  // Starts or drains workers until GetReplicas(pool) == replicas. UNAVAILABLE when a worker
  // cannot be started (the ones started before it stay).
  Status SetReplicas(Pool pool, int replicas) override;
  std::string Describe() const override;

  // Reads the endpoint lines of starting workers, reaps workers that exited, SIGKILLs a
  // draining worker past its stop timeout. Returns one line for every worker that exited
  // without being drained, or did not start within start_timeout (killed); those no longer
  // count. Never blocks for long (one non-blocking read per starting worker).
  std::vector<std::string> Poll();
  // Polls until every starting worker serves; UNAVAILABLE / DEADLINE_EXCEEDED naming the first
  // one that died or did not start by `deadline`.
  Status WaitStarted(std::chrono::steady_clock::time_point deadline);

  // /metrics URLs of the serving, not draining workers of each pool (index Pool).
  std::array<std::vector<std::string>, kPools> MetricsUrls() const;
  // The endpoint lines ("prefill metrics URL", "prefill grpc HOST:PORT"...) of the serving
  // workers, prefill first, each pool in start order.
  std::vector<std::string> EndpointLines() const;
  // Workers drained and exited so far, and of those the ones that exited with status 0.
  int drained() const;
  int drained_cleanly() const;
  // Workers still draining.
  int draining() const;

  // SIGTERM to every worker (they drain at once), a wait of at most `timeout` for all of them,
  // then SIGKILL for the rest; every one is reaped.
  void StopAll(std::chrono::milliseconds timeout);

 private:
  struct Worker {
    Pool pool = Pool::kPrefill;
    int index = 0;
    std::unique_ptr<ChildProcess> process;
    std::chrono::steady_clock::time_point started_at;
    bool draining = false;
    bool failed = false;  // killed for not starting in time (already reported)
    std::chrono::steady_clock::time_point drain_started_at;
  };
  std::string Name(const Worker& w) const;
  // Requests running + waiting on the worker's /metrics; nullopt when it cannot be read.
  std::optional<double> Load(const std::string& metrics_url) const;
  std::vector<std::string> PollLocked();

  const ProcessActuatorOptions options_;
  mutable std::mutex mu_;
  std::vector<Worker> workers_;
  std::array<int, kPools> next_index_{};
  int drained_ = 0;
  int drained_cleanly_ = 0;
};

}  // namespace tandem::planner
