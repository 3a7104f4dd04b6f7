#include "tandem/rpc/worker_registration.h"

#include <unistd.h>

#include <cstring>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "tandem/common/logging.h"
#include "tandem/rpc/cluster_auth.h"

namespace tandem {

std::string DefaultWorkerId(std::string_view role) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  return fmt::format("{}-{}-{}", role, host, getpid());
}

WorkerRegistration::WorkerRegistration(WorkerRegistrationOptions options,
                                       std::function<WorkerLoad()> load)
    : options_(std::move(options)), load_(std::move(load)), interval_(options_.retry_interval) {
  stub_ = v1::Registry::NewStub(grpc::CreateChannel(
      options_.router, options_.channel_credentials ? options_.channel_credentials
                                                    : grpc::InsecureChannelCredentials()));
  thread_ = std::thread([this] { Run(); });
}

WorkerRegistration::~WorkerRegistration() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Status WorkerRegistration::WaitRegistered(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return registered_ || stop_; }) || !registered_) {
    return DeadlineExceededError("{} could not register with the router at {} within {} ms",
                                 options_.announce.worker_id(), options_.router, timeout.count());
  }
  return Status::Ok();
}

void WorkerRegistration::SetDraining() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

Status WorkerRegistration::WaitDrainingAcknowledged(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout,
                    [&] { return draining_acknowledged_ || !registered_ || stop_; })) {
    return DeadlineExceededError("{}: the router at {} did not acknowledge the drain within {} ms",
                                 options_.announce.worker_id(), options_.router, timeout.count());
  }
  return Status::Ok();
}

bool WorkerRegistration::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return registered_;
}

void WorkerRegistration::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    const std::chrono::milliseconds wait = Step();
    lock.lock();
    cv_.wait_for(lock, wait, [&] { return stop_ || (draining_ && !draining_sent_); });
  }
}

std::chrono::milliseconds WorkerRegistration::Step() {
  bool registered;
  bool draining;
  {
    std::lock_guard<std::mutex> lock(mu_);
    registered = registered_;
    draining = draining_;
    if (registered && draining) draining_sent_ = true;  // wake early for it once, not in a loop
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + options_.rpc_timeout);
  AttachClusterKey(&ctx, options_.cluster_key);
  grpc::Status st;
  if (!registered) {
    v1::RegisterResponse resp;
    st = stub_->Register(&ctx, options_.announce, &resp);
    if (st.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      registered_ = true;
      cache_full_next_ = true;  // a (new) router knows nothing of this worker's cache
      interval_ = std::chrono::milliseconds(std::max(resp.heartbeat_interval_ms(), 50));
      failures_ = 0;
      TLOG_INFO("{}: registered with the router at {} (heartbeat every {} ms)",
                options_.announce.worker_id(), options_.router, interval_.count());
      cv_.notify_all();
      return std::chrono::milliseconds(0);  // first heartbeat with the load at once
    }
  } else {
    const WorkerLoad load = load_();
    v1::HeartbeatRequest req;
    req.set_worker_id(options_.announce.worker_id());
    req.set_kv_pages_used(load.kv_pages_used);
    req.set_kv_pages_total(load.kv_pages_total);
    req.set_requests_running(load.requests_running);
    req.set_requests_waiting(load.requests_waiting);
    req.set_queued_prompt_tokens(load.queued_prompt_tokens);
    req.set_draining(draining);
    if (options_.cache_report) {
      bool full;
      {
        std::lock_guard<std::mutex> lock(mu_);
        full = cache_full_next_;
      }
      WorkerCacheReport report = options_.cache_report(full);
      req.mutable_cached_blocks_added()->Add(report.added.begin(), report.added.end());
      req.mutable_cached_blocks_evicted()->Add(report.evicted.begin(), report.evicted.end());
      req.set_cached_blocks_full(report.full);
    }
    v1::HeartbeatResponse resp;
    st = stub_->Heartbeat(&ctx, req, &resp);
    {
      // A heartbeat the router did not take loses its changes: the next one sends everything.
      std::lock_guard<std::mutex> lock(mu_);
      cache_full_next_ = !st.ok() || !resp.known();
    }
    if (draining) {
      // Answered (the router knows), or failed (a router that cannot be reached sends nothing
      // here anyway): either way there is nothing more to wait for.
      std::lock_guard<std::mutex> lock(mu_);
      draining_acknowledged_ = true;
      cv_.notify_all();
    }
    if (st.ok() && !resp.known()) {
      std::lock_guard<std::mutex> lock(mu_);
      registered_ = false;
      TLOG_INFO("{}: the router at {} does not know this worker; registering again",
                options_.announce.worker_id(), options_.router);
      return std::chrono::milliseconds(0);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!st.ok()) {
    // Log the first failure and then every 30th, not every attempt.
    if (failures_++ % 30 == 0) {
      TLOG_WARN("{}: {} with the router at {} failed: {}", options_.announce.worker_id(),
                registered ? "heartbeat" : "registration", options_.router, st.error_message());
    }
    return registered_ ? interval_ : options_.retry_interval;
  }
  failures_ = 0;
  return interval_;
}

}  // namespace tandem
