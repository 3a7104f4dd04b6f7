#include "tandem/rpc/worker_registration.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "tandem/common/logging.h"
#include "tandem/rpc/cluster_auth.h"

namespace tandem {

namespace {

using Clock = std::chrono::steady_clock;

// A router's backlog of unacknowledged cache changes past this many keys is dropped for a full
// report (the same bound as the prefix cache's own journal).
constexpr size_t kMaxBacklogKeys = size_t{1} << 16;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

std::string DefaultWorkerId(std::string_view role) {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') std::strcpy(host, "host");
  return fmt::format("{}-{}-{}", role, host, getpid());
}

StatusOr<std::vector<std::string>> ParseRouterList(std::string_view list, std::string_view flag) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t comma = list.find(',', start);
    const std::string_view item =
        Trim(list.substr(start, comma == std::string_view::npos ? list.npos : comma - start));
    if (item.empty()) {
      return InvalidArgumentError("{}: empty router address in \"{}\" (HOST:PORT[,HOST:PORT...])",
                                  flag, list);
    }
    if (std::find(out.begin(), out.end(), item) != out.end()) {
      return InvalidArgumentError("{}: router {} is listed twice", flag, item);
    }
    out.emplace_back(item);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

// One router's side of the registration. Written by the registration thread; `registered`,
// `call`, `done` and the draining flags are read or written elsewhere only under mu_.
struct WorkerRegistration::Router {
  std::string address;
  std::unique_ptr<v1::Registry::Stub> stub;
  bool registered = false;
  std::unique_ptr<Call> call;  // in flight, or finished (`done`) and not yet applied
  bool done = false;
  Clock::time_point next_due;  // of the next Register or Heartbeat
  std::chrono::milliseconds interval{0};
  int32_t failures = 0;
  bool draining_sent = false;  // a heartbeat that said draining was started
  bool draining_acknowledged = false;
  // The next heartbeat sends the whole cache (from the mirror), not the backlog.
  bool needs_full = true;
  // Cache changes this router has not acknowledged: key → cached now (true) or evicted.
  std::unordered_map<uint64_t, bool> backlog;
};

struct WorkerRegistration::Call {
  grpc::ClientContext ctx;
  bool is_register = false;
  v1::RegisterResponse register_response;
  v1::HeartbeatRequest heartbeat;
  v1::HeartbeatResponse heartbeat_response;
  bool full = false;                        // the heartbeat carried the whole cache
  std::unordered_map<uint64_t, bool> sent;  // the backlog it carried otherwise
  grpc::Status status;
};

WorkerRegistration::WorkerRegistration(WorkerRegistrationOptions options,
                                       std::function<WorkerLoad()> load)
    : options_(std::move(options)), load_(std::move(load)) {
  // A router that comes back (restart) is reconnected to within about one retry interval, not
  // after gRPC's default reconnect backoff (growing to two minutes while a router is down). The
  // time one connection attempt may take stays gRPC's (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS).
  grpc::ChannelArguments args;
  const int backoff_ms = static_cast<int>(std::max<int64_t>(options_.retry_interval.count(), 100));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, backoff_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff_ms);
  const Clock::time_point now = Clock::now();
  for (const std::string& address : options_.routers) {
    auto r = std::make_unique<Router>();
    r->address = address;
    r->stub = v1::Registry::NewStub(
        grpc::CreateCustomChannel(address,
                                  options_.channel_credentials ? options_.channel_credentials
                                                               : grpc::InsecureChannelCredentials(),
                                  args));
    r->next_due = now;
    r->interval = options_.retry_interval;
    routers_.push_back(std::move(r));
  }
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
  auto any = [&] {
    return std::any_of(routers_.begin(), routers_.end(),
                       [](const auto& r) { return r->registered; });
  };
  if (!cv_.wait_for(lock, timeout, [&] { return any() || stop_; }) || !any()) {
    return DeadlineExceededError("{} could not register with the router{} at {} within {} ms",
                                 options_.announce.worker_id(), routers_.size() > 1 ? "s" : "",
                                 fmt::join(options_.routers, ", "), timeout.count());
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
  auto pending = [&] {
    std::vector<std::string> out;
    for (const auto& r : routers_) {
      if (r->registered && !r->draining_acknowledged) out.push_back(r->address);
    }
    return out;
  };
  if (!cv_.wait_for(lock, timeout, [&] { return stop_ || pending().empty(); })) {
    return DeadlineExceededError(
        "{}: the router{} at {} did not acknowledge the drain within {} ms",
        options_.announce.worker_id(), pending().size() > 1 ? "s" : "", fmt::join(pending(), ", "),
        timeout.count());
  }
  return Status::Ok();
}

bool WorkerRegistration::registered() const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::any_of(routers_.begin(), routers_.end(), [](const auto& r) { return r->registered; });
}

bool WorkerRegistration::registered_with(size_t i) const {
  std::lock_guard<std::mutex> lock(mu_);
  return i < routers_.size() && routers_[i]->registered;
}

void WorkerRegistration::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    for (auto& r : routers_) {
      if (r->call && r->done) {
        Finish(*r, *r->call);
        r->call.reset();
        r->done = false;
      }
    }
    if (stop_) break;
    const Clock::time_point next = StartDueCalls(lock);
    cv_.wait_until(lock, next, [&] {
      if (stop_) return true;
      for (const auto& r : routers_) {
        if (r->done) return true;
        if (draining_ && r->registered && !r->call && !r->draining_sent) return true;
      }
      return false;
    });
  }
  // Cancel what is in flight (each call ends at once) and wait for their callbacks: they touch
  // this object.
  std::vector<grpc::ClientContext*> in_flight;
  for (auto& r : routers_) {
    if (r->call && !r->done) in_flight.push_back(&r->call->ctx);
  }
  lock.unlock();
  for (grpc::ClientContext* ctx : in_flight) ctx->TryCancel();
  lock.lock();
  cv_.wait(lock, [&] { return in_flight_ == 0; });
}

Clock::time_point WorkerRegistration::StartDueCalls(std::unique_lock<std::mutex>& lock) {
  const Clock::time_point now = Clock::now();
  std::vector<Router*> to_register, to_heartbeat;
  for (auto& r : routers_) {
    if (r->call) continue;  // one call per router at a time
    if (!r->registered) {
      if (now >= r->next_due) to_register.push_back(r.get());
    } else if (now >= r->next_due || (draining_ && !r->draining_sent)) {
      to_heartbeat.push_back(r.get());
    }
  }
  std::vector<std::pair<Router*, std::unique_ptr<Call>>> calls;
  for (Router* r : to_register) {
    auto call = std::make_unique<Call>();
    call->is_register = true;
    calls.emplace_back(r, std::move(call));
  }
  if (!to_heartbeat.empty()) {
    // One round: the load and the cache's changes are read once and go to every router.
    const bool draining = draining_;
    lock.unlock();
    const WorkerLoad load = load_();
    lock.lock();
    if (options_.cache_report) TakeCacheChanges(lock);
    v1::HeartbeatRequest req;
    req.set_worker_id(options_.announce.worker_id());
    req.set_kv_pages_used(load.kv_pages_used);
    req.set_kv_pages_total(load.kv_pages_total);
    req.set_requests_running(load.requests_running);
    req.set_requests_waiting(load.requests_waiting);
    req.set_queued_prompt_tokens(load.queued_prompt_tokens);
    req.set_draining(draining);
    for (Router* r : to_heartbeat) {
      auto call = std::make_unique<Call>();
      call->heartbeat = req;
      if (options_.cache_report) FillCacheReport(*r, call.get());
      if (draining) r->draining_sent = true;  // wake early for it once, not in a loop
      calls.emplace_back(r, std::move(call));
    }
  }
  for (auto& [r, call] : calls) {
    call->ctx.set_deadline(std::chrono::system_clock::now() + options_.rpc_timeout);
    AttachClusterKey(&call->ctx, options_.cluster_key);
    r->call = std::move(call);
    ++in_flight_;
  }
  // Started without the lock (a callback may run on this thread); the calls stay put until this
  // thread applies them.
  lock.unlock();
  for (auto& [r, unused] : calls) {
    Call* call = r->call.get();
    auto done = [this, r = r, call](grpc::Status status) {
      std::lock_guard<std::mutex> guard(mu_);
      call->status = std::move(status);
      r->done = true;
      --in_flight_;
      cv_.notify_all();  // under the lock: the destructor may run once in_flight_ reads 0
    };
    if (call->is_register) {
      r->stub->async()->Register(&call->ctx, &options_.announce, &call->register_response,
                                 std::move(done));
    } else {
      r->stub->async()->Heartbeat(&call->ctx, &call->heartbeat, &call->heartbeat_response,
                                  std::move(done));
    }
  }
  lock.lock();
  Clock::time_point next = Clock::now() + std::chrono::hours(1);
  for (const auto& r : routers_) {
    if (!r->call) next = std::min(next, r->next_due);
  }
  return next;
}

void WorkerRegistration::TakeCacheChanges(std::unique_lock<std::mutex>& lock) {
  const bool first = !taken_first_;
  lock.unlock();
  WorkerCacheReport report = options_.cache_report(first);
  lock.lock();
  taken_first_ = true;
  if (report.full) {
    cached_ = std::unordered_set<uint64_t>(report.added.begin(), report.added.end());
    for (auto& r : routers_) {
      r->needs_full = true;
      r->backlog.clear();
    }
    return;
  }
  for (uint64_t k : report.added) cached_.insert(k);
  for (uint64_t k : report.evicted) cached_.erase(k);
  for (auto& r : routers_) {
    if (!r->registered || r->needs_full) continue;  // a full report covers these changes
    for (uint64_t k : report.added) r->backlog[k] = true;
    for (uint64_t k : report.evicted) r->backlog[k] = false;
    if (r->backlog.size() > kMaxBacklogKeys) {
      r->needs_full = true;
      r->backlog.clear();
    }
  }
}

void WorkerRegistration::FillCacheReport(Router& r, Call* call) {
  v1::HeartbeatRequest& req = call->heartbeat;
  if (r.needs_full) {
    req.mutable_cached_blocks_added()->Add(cached_.begin(), cached_.end());
    req.set_cached_blocks_full(true);
    call->full = true;
    // The changes taken from now on follow this report: they start a new backlog.
    r.needs_full = false;
    r.backlog.clear();
    return;
  }
  for (const auto& [key, cached] : r.backlog) {
    (cached ? req.mutable_cached_blocks_added() : req.mutable_cached_blocks_evicted())->Add(key);
  }
  call->sent = std::move(r.backlog);
  r.backlog.clear();
}

void WorkerRegistration::Finish(Router& r, Call& call) {
  const Clock::time_point now = Clock::now();
  const std::string& id = options_.announce.worker_id();
  const grpc::Status& st = call.status;
  if (call.is_register) {
    if (st.ok()) {
      r.registered = true;
      r.needs_full = true;  // a (new) router knows nothing of this worker's cache
      r.backlog.clear();
      r.draining_sent = false;
      r.draining_acknowledged = false;
      r.interval =
          std::chrono::milliseconds(std::max(call.register_response.heartbeat_interval_ms(), 50));
      r.failures = 0;
      r.next_due = now;  // the first heartbeat, with the load and the cache, at once
      TLOG_INFO("{}: registered with the router at {} (heartbeat every {} ms)", id, r.address,
                r.interval.count());
      cv_.notify_all();
      return;
    }
    if (r.failures++ % 30 == 0) {  // the first failure and then every 30th, not every attempt
      TLOG_WARN("{}: registration with the router at {} failed: {}", id, r.address,
                st.error_message());
    }
    r.next_due = now + options_.retry_interval;
    return;
  }
  if (call.heartbeat.draining()) {
    // Answered (the router knows), or failed (a router that cannot be reached sends nothing
    // here anyway): either way there is nothing more to wait for.
    r.draining_acknowledged = true;
    cv_.notify_all();
  }
  if (st.ok() && !call.heartbeat_response.known()) {
    r.registered = false;
    r.needs_full = true;
    r.backlog.clear();
    r.next_due = now;
    TLOG_INFO("{}: the router at {} does not know this worker; registering again", id, r.address);
    cv_.notify_all();
    return;
  }
  r.next_due = now + r.interval;
  if (st.ok()) {
    r.failures = 0;
    return;
  }
  // The router may or may not have applied the report: send it again, under the newer changes
  // (a key's latest state wins, so applying it twice is harmless); a lost full report is redone.
  if (call.full) {
    r.needs_full = true;
    r.backlog.clear();
  } else if (!r.needs_full) {
    for (const auto& [key, cached] : call.sent) r.backlog.emplace(key, cached);
    if (r.backlog.size() > kMaxBacklogKeys) {
      r.needs_full = true;
      r.backlog.clear();
    }
  }
  if (r.failures++ % 30 == 0) {
    TLOG_WARN("{}: heartbeat with the router at {} failed: {}", id, r.address, st.error_message());
  }
}

}  // namespace tandem
