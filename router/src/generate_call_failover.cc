// GenerateCall's failures: which errors mean a worker failed, moving a request to other
// workers (FailOver, WaitForWorker), and releasing reservations.
#include <algorithm>

#include <fmt/format.h>

#include "generate_call.h"
#include "generate_call_util.h"
#include "tandem/common/logging.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem {

namespace {

using generate_call_internal::NewRequestId;
using generate_call_internal::Seconds;

struct ReleaseCall {
  grpc::ClientContext ctx;
  v1::ReleaseRequest request;
  v1::ReleaseResponse response;
};

std::string_view PhaseName(CallPhase phase) {
  switch (phase) {
    case CallPhase::kReserving:
      return "reserve";
    case CallPhase::kPrefilling:
      return "prefill";
    case CallPhase::kDecoding:
      return "decode";
    case CallPhase::kIdle:
      break;
  }
  return "idle";
}

}  // namespace

bool GenerateCall::WorkerFailed(const grpc::Status& status) const {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::ABORTED:
      return true;
    case grpc::StatusCode::CANCELLED:  // by OnWorkerLost (a client's cancel sets outcome_ first)
      return CancelledForLostWorker(status);
    default:
      return false;
  }
}

void GenerateCall::OnWorkerLost(const void* worker) {
  grpc::ClientContext* ctx = nullptr;
  CallPhase phase;
  bool decode_lost;
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase = phase_;
    if (outcome_ || current_ctx_ == nullptr) return;
    const bool decode = decode_ != nullptr && decode_.get() == worker;
    decode_lost = decode;
    const bool prefill = prefill_ != nullptr && prefill_.get() == worker;
    if ((phase == CallPhase::kReserving && decode) || (phase == CallPhase::kDecoding && decode) ||
        (phase == CallPhase::kPrefilling && (decode || prefill))) {
      ctx = current_ctx_;
      worker_lost_ = true;
      receiver_lost_ = phase == CallPhase::kPrefilling && decode && !prefill;
    }
  }
  if (ctx == nullptr) return;
  TLOG_WARN("req={} its {} worker left the registry ({} phase); moving the request", id_,
            decode_lost ? "decode" : "prefill", PhaseName(phase));
  ctx->TryCancel();
}

std::vector<const DecodeWorkerRef*> GenerateCall::AvoidDecode() const {
  std::vector<const DecodeWorkerRef*> out;
  for (const auto& w : failed_decode_) out.push_back(w.get());
  for (const auto& w : refused_by_) out.push_back(w.get());
  return out;
}

void GenerateCall::WaitForWorker(const char* role) {
  const Clock::time_point now = Clock::now();
  if (!wait_until_) wait_until_ = now + backend_->options.failover_wait;
  const auto interval = backend_->pool->heartbeat_interval();
  const auto to_deadline = client_deadline_ - std::chrono::system_clock::now();
  if (now + interval > *wait_until_ || interval > to_deadline) {
    return FailWith(ToGrpcStatus(
        UnavailableError("req={}: {} and no {} worker joined to take the request within {} ms{}",
                         id_, last_failure_, role, backend_->options.failover_wait.count(),
                         interval > to_deadline ? " (the request's deadline came first)" : "")));
  }
  TLOG_DEBUG("req={} waits for a {} worker to move to", id_, role);
  std::lock_guard<std::mutex> lock(mu_);
  if (outcome_) return;
  alarms_.push_back(std::make_unique<grpc::Alarm>());
  alarms_.back()->Set(std::chrono::system_clock::now() + interval,
                      [self = shared_from_this()](bool fired) {
                        if (fired) return self->StartReserve();
                        self->Pump();  // cancelled: the call ended
                      });
}

void GenerateCall::FailOver(CallPhase phase, const grpc::Status& status) {
  // A prefill that failed because its KV receiver did (died, froze, refused the pages: the
  // prefill worker says so with ERROR_ORIGIN_PEER; or the router cancelled the call because the
  // decode worker left the registry) is the decode worker's failure: that one is avoided, the
  // prefill worker stays eligible.
  const bool peer_failed = FromGrpcStatus(status).origin() == ErrorOrigin::kPeer;
  bool receiver_failed;
  std::string worker;
  std::string why;  // set when the request cannot move
  int32_t generated;
  {
    std::lock_guard<std::mutex> lock(mu_);
    receiver_failed = phase == CallPhase::kPrefilling &&
                      (peer_failed || (CancelledForLostWorker(status) && receiver_lost_));
    phase_ = CallPhase::kIdle;
    if (outcome_) {  // ended meanwhile (cancelled, cut): nothing to move
      why = "ended";
    } else if (!receiver_failed && !WorkerFailed(status)) {
      why = "not a worker failure";
    }
    worker = phase == CallPhase::kDecoding ? decode_->address : prefill_->address;
    if (receiver_failed) {
      worker = fmt::format("{} (its KV receiver, decode worker {})", worker, decode_->address);
    }
    generated = static_cast<int32_t>(generated_.size());
    if (why.empty()) {
      if (failovers_ >= backend_->options.max_failovers) {
        why = fmt::format("its failover budget ({}) is spent", backend_->options.max_failovers);
      } else if (std::chrono::system_clock::now() >= client_deadline_) {
        why = "its deadline has passed";
      }
    }
    if (why.empty()) {
      ++failovers_;
      if (!failed_at_) failed_at_ = Clock::now();
    }
  }
  if (!why.empty()) ReleaseReservation();  // open when the prefill phase failed
  if (why == "ended") return Pump();
  if (why == "not a worker failure") return FailWith(status);
  if (!why.empty()) {
    TLOG_WARN("req={} {} worker {} failed ({}); not moved: {}", id_, PhaseName(phase), worker,
              status.error_message(), why);
    return FailWith(
        ToGrpcStatus(UnavailableError("req={}: {} worker {} failed ({}) and {}", id_,
                                      PhaseName(phase), worker, status.error_message(), why)));
  }
  last_failure_ =
      fmt::format("{} worker {} failed ({})", PhaseName(phase), worker, status.error_message());
  backend_->metrics->failovers(PhaseName(phase)).Increment();
  TLOG_WARN(
      "req={} {} worker {} failed ({}); moving the request (failover {} of {}, {} tokens "
      "streamed)",
      id_, PhaseName(phase), worker, status.error_message(), failovers_,
      backend_->options.max_failovers, generated);
  if (phase == CallPhase::kDecoding || receiver_failed) {
    failed_decode_.push_back(decode_);
  } else {
    failed_prefill_.push_back(prefill_);
  }
  // A fresh attempt: new ids on the workers, a fresh choice of decode worker, once the old
  // reservation (prefill phase) is released.
  ReleaseReservation([self = shared_from_this()] {
    self->decode_->active.fetch_sub(1);
    self->decode_ = nullptr;
    self->refused_by_.clear();
    self->wait_until_.reset();
    self->worker_id_ = NewRequestId();
    self->StartReserve();
  });
}

void GenerateCall::ReleaseReservation(std::function<void()> then) {
  bool open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    open = reservation_open_;
    reservation_open_ = false;
  }
  if (open) return SendRelease(decode_, worker_id_, /*maybe_absent=*/false, std::move(then));
  if (then) then();
}

void GenerateCall::SendRelease(std::shared_ptr<DecodeWorkerRef> worker, std::string worker_id,
                               bool maybe_absent, std::function<void()> then) {
  auto rc = std::make_shared<ReleaseCall>();
  rc->request.set_request_id(std::move(worker_id));
  rc->ctx.set_deadline(std::chrono::system_clock::now() + backend_->options.release_timeout);
  AttachClusterKey(&rc->ctx, backend_->options.cluster_key);
  DecodeWorkerRef* w = worker.get();
  w->stub->async()->Release(&rc->ctx, &rc->request, &rc->response,
                            [rc, worker = std::move(worker), maybe_absent, then = std::move(then),
                             self = shared_from_this()](grpc::Status s) {
                              const bool expected =
                                  maybe_absent &&
                                  (s.error_code() == grpc::StatusCode::NOT_FOUND ||
                                   s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
                              if (!s.ok() && !expected) {
                                TLOG_WARN("req={} release on {} failed: {}", self->id_,
                                          worker->address, s.error_message());
                              }
                              if (then) then();
                            });
}
}  // namespace tandem
