// A worker's side of the routers' Registry service: registers once the worker is ready, then
// heartbeats its load at the interval each router asked for. It works with one router or with
// several replicas (`routers`), each independently: a router that forgot the worker (restart)
// answers known=false and the worker registers with it again; a router that cannot be reached is
// retried at the same interval, so workers and routers may start in any order, and a router that
// is down, slow or restarting never delays the others (every router has at most one call in
// flight, each with its own deadline; the calls run concurrently).
//
// Prefix-cache reports (cache_report): the journal is taken once per heartbeat round and the
// same changes go to every router. The registration keeps, per router, the changes that router
// has not acknowledged yet (a failed heartbeat sends them again, merged with newer ones, which is
// idempotent) and a mirror of the whole cached key set: a router that just (re)registered, or
// whose backlog overflowed, gets a full report from the mirror while the others keep receiving
// deltas. So cache_report(full = true) is called only for the first report and after the cache's
// own journal overflowed.
//
// Thread safety: the constructor starts one thread (the calls complete on gRPC's threads, which
// only hand the results back to it); SetDraining and the accessors may be called from any
// thread; the destructor cancels the calls in flight and stops the thread (bounded by one RPC
// deadline).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <grpcpp/security/credentials.h>

#include "tandem/common/status.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

// A worker id no other process shares: "<role>-<hostname>-<pid>" (a second worker that
// registered under the same id would replace the first in the router's pool).
std::string DefaultWorkerId(std::string_view role);

// "host:port[,host:port...]" (a worker's --router) → the addresses, blanks around each trimmed;
// INVALID_ARGUMENT naming `flag` for an empty list, an empty entry or a duplicate.
StatusOr<std::vector<std::string>> ParseRouterList(std::string_view list,
                                                   std::string_view flag = "--router");

struct WorkerLoad {
  int32_t kv_pages_used = 0;
  int32_t kv_pages_total = 0;
  int32_t requests_running = 0;
  int32_t requests_waiting = 0;
  int64_t queued_prompt_tokens = 0;
};

struct WorkerCacheReport {
  std::vector<uint64_t> added;
  std::vector<uint64_t> evicted;
  bool full = false;
};

struct WorkerRegistrationOptions {
  // The routers' gRPC addresses, "host:port" each (ParseRouterList of a comma-separated list).
  // Required: at least one.
  std::vector<std::string> routers;
  // What the worker announces (RegisterRequest). Required: worker_id, role, address.
  v1::RegisterRequest announce;
  // Wait between attempts before the router told its interval. Default: 1 s.
  std::chrono::milliseconds retry_interval{1000};
  // Deadline of one Register / Heartbeat call. Default: 2 s.
  std::chrono::milliseconds rpc_timeout{2000};
  // Sent with every call (tandem/rpc/cluster_auth.h); empty: none.
  std::string cluster_key;
  // Of the channel to the router (tandem/rpc/tls_credentials.h). Default (null): plaintext.
  std::shared_ptr<grpc::ChannelCredentials> channel_credentials;
  // Prefix-cache keys for each heartbeat round (HeartbeatRequest.cached_blocks_*): the changes
  // since the previous call, or every cached key with `full` set (asked for with full = true on
  // the first call; a report may also come back full by itself, e.g. after the cache's journal
  // overflowed). Called from the registration thread, once per round whatever the number of
  // routers. Default: none.
  std::function<WorkerCacheReport(bool full)> cache_report;
};

class WorkerRegistration {
 public:
  // `load` is called from the registration thread before every heartbeat round.
  WorkerRegistration(WorkerRegistrationOptions options, std::function<WorkerLoad()> load);
  ~WorkerRegistration();
  WorkerRegistration(const WorkerRegistration&) = delete;
  WorkerRegistration& operator=(const WorkerRegistration&) = delete;

  // Blocks until at least one router accepted a Register, or DEADLINE_EXCEEDED naming the
  // routers. One is enough: the worker can take work as soon as any router can send it some,
  // and a router that is down must not keep the worker from starting; the others register in
  // the background (registered_with tells which).
  Status WaitRegistered(std::chrono::milliseconds timeout);
  // The next heartbeat to every router (sent at once to each one not busy with a call) says
  // draining; the routers stop sending new work.
  void SetDraining();
  // After SetDraining: blocks until, for every router, a heartbeat that said draining has
  // completed: answered (from then on that router picks this worker for no new request) or
  // failed (a router that cannot be reached sends nothing anyway), or the worker is not
  // registered there; at once when it is registered nowhere; DEADLINE_EXCEEDED naming the
  // routers still waited for past `timeout`.
  Status WaitDrainingAcknowledged(std::chrono::milliseconds timeout);
  // Registered with at least one router.
  bool registered() const;
  // Whether the router `options.routers[i]` holds this worker's registration now.
  bool registered_with(size_t i) const;

 private:
  struct Router;
  struct Call;
  void Run();
  // Under mu_: starts the calls that are due; returns the earliest time another one is due.
  std::chrono::steady_clock::time_point StartDueCalls(std::unique_lock<std::mutex>& lock);
  // Under mu_: applies one finished call to its router's state.
  void Finish(Router& r, Call& call);
  // Under mu_ (released around cache_report): the round's prefix-cache changes into the mirror
  // and every registered router's backlog.
  void TakeCacheChanges(std::unique_lock<std::mutex>& lock);
  // Under mu_: the router's report (its backlog, or the mirror when it needs a full one).
  void FillCacheReport(Router& r, Call* call);

  const WorkerRegistrationOptions options_;
  const std::function<WorkerLoad()> load_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool draining_ = false;
  std::vector<std::unique_ptr<Router>> routers_;
  int32_t in_flight_ = 0;  // calls started and not yet finished
  // Every cached key as reported so far (the routers' full reports); valid once taken_first_.
  std::unordered_set<uint64_t> cached_;
  bool taken_first_ = false;
  std::thread thread_;
};

}  // namespace tandem
