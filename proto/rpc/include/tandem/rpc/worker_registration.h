// A worker's side of the router's Registry service: registers once the worker is ready, then
// heartbeats its load at the interval the router asked for. A router that forgot the worker
// (restart) answers known=false and the worker registers again; a router that cannot be reached
// is retried at the same interval, so workers and routers may start in any order.
//
// Thread safety: the constructor starts one thread; SetDraining and the accessors may be called
// from any thread; the destructor stops the thread (bounded by one RPC deadline).
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
#include <vector>

#include <grpcpp/security/credentials.h>

#include "tandem/common/status.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

// A worker id no other process shares: "<role>-<hostname>-<pid>" (a second worker that
// registered under the same id would replace the first in the router's pool).
std::string DefaultWorkerId(std::string_view role);

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
  // The router's gRPC address, "host:port". Required.
  std::string router;
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
  // Prefix-cache keys for each heartbeat (HeartbeatRequest.cached_blocks_*): called with
  // full = true for the first heartbeat after a registration and after a heartbeat that failed
  // (its changes are lost), when it must give every cached key and set `full`. Default: none.
  std::function<WorkerCacheReport(bool full)> cache_report;
};

class WorkerRegistration {
 public:
  // `load` is called from the registration thread before every heartbeat.
  WorkerRegistration(WorkerRegistrationOptions options, std::function<WorkerLoad()> load);
  ~WorkerRegistration();
  WorkerRegistration(const WorkerRegistration&) = delete;
  WorkerRegistration& operator=(const WorkerRegistration&) = delete;

  // Blocks until the router accepted a Register, or DEADLINE_EXCEEDED naming the router.
  Status WaitRegistered(std::chrono::milliseconds timeout);
  // The next heartbeat (sent at once) says draining; the router stops sending new work.
  void SetDraining();
  // After SetDraining: blocks until a heartbeat that said draining has completed: answered (from
  // then on the router picks this worker for no new request) or failed (a router that cannot be
  // reached sends nothing anyway); at once when the worker is not registered; DEADLINE_EXCEEDED
  // naming the router past `timeout`.
  Status WaitDrainingAcknowledged(std::chrono::milliseconds timeout);
  bool registered() const;

 private:
  void Run();
  // One Register or Heartbeat; returns the wait until the next one.
  std::chrono::milliseconds Step();

  const WorkerRegistrationOptions options_;
  const std::function<WorkerLoad()> load_;
  std::unique_ptr<v1::Registry::Stub> stub_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool draining_ = false;
  bool draining_sent_ = false;
  bool draining_acknowledged_ = false;
  bool registered_ = false;
  std::chrono::milliseconds interval_;
  int32_t failures_ = 0;
  bool cache_full_next_ = true;  // the next heartbeat reports the whole prefix cache
  std::thread thread_;
};

}  // namespace tandem
