// GenerateCall's phases: the (prefill, decode) pair and the Reserve on the decode worker, the
// Prefill call, then the Decode stream.
#include <algorithm>

#include <fmt/format.h>

#include "generate_call.h"
#include "generate_call_util.h"
#include "tandem/common/logging.h"
#include "tandem/router/kv_transport_choice.h"
#include "tandem/router/request_validation.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem {

namespace {

using generate_call_internal::NewRequestId;
using generate_call_internal::Seconds;

// The deeper of what the workers reported (heartbeats) and what this router recorded when it
// routed (the record covers pages cached since a worker's last report; the report knows of
// evictions and of other routers' requests).
CachedPrefix DeepestCached(CachedPrefix reported, const std::optional<AffinityMatch>& recorded) {
  if (recorded && recorded->matched_tokens > reported.tokens) {
    return {recorded->worker_id, recorded->matched_tokens};
  }
  return reported;
}

// Reads a Decode stream into its GenerateCall; deletes itself when the call is done.
class DecodeReader : public grpc::ClientReadReactor<v1::DecodeResponse> {
 public:
  explicit DecodeReader(std::shared_ptr<GenerateCall> call) : call_(std::move(call)) {}

  void Begin(v1::DecodeWorker::Stub* stub, grpc::ClientContext* ctx,
             const v1::DecodeRequest* request) {
    stub->async()->Decode(ctx, request, this);
    StartRead(&msg_);
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream ended; OnDone follows
    call_->OnDecodeMessage(msg_);
    msg_.Clear();
    StartRead(&msg_);
  }

  void OnDone(const grpc::Status& status) override {
    call_->OnDecodeDone(status);
    delete this;
  }

 private:
  std::shared_ptr<GenerateCall> call_;
  v1::DecodeResponse msg_;
};

}  // namespace

int64_t GenerateCall::ReservedTokens() const {
  return static_cast<int64_t>(prompt_.size() + generated_.size());
}

void GenerateCall::StartReserve() {
  const int64_t tokens = ReservedTokens();
  planned_prefill_ = nullptr;
  planned_transport_.clear();
  if (decode_ == nullptr && failovers_ == 0 && AvoidDecode().empty()) {
    // A new request: the (prefill, decode) pair with the earliest estimated first token.
    PairQuery query;
    query.tokens = prompt_;
    query.reserved_tokens = tokens;
    if (auto r = backend_->prefill_affinity.Lookup(prompt_)) {
      query.recorded_prefill = {r->worker_id, r->matched_tokens};
    }
    if (auto r = backend_->affinity.Lookup(prompt_)) {
      query.recorded_decode = {r->worker_id, r->matched_tokens};
    }
    query.ship_only_missing = backend_->pool->AllPrefillSendFromFirstBlock();
    query.kv_transport = backend_->options.kv_transport;
    PairChoice pair = backend_->pool->PickPair(query);
    decode_ = std::move(pair.decode);
    planned_prefill_ = std::move(pair.prefill);
    planned_cached_ = pair.prefill_cached_tokens;
    planned_transport_ = pair.transport;
    if (planned_prefill_ != nullptr) {
      TLOG_DEBUG(
          "req={} pair {} -> {} over {}: estimated first token in {:.3f} s (queue {:.3f}, "
          "compute {:.3f}, transfer {:.3f})",
          id_, planned_prefill_->id, decode_->id, pair.transport, pair.estimate.total(),
          pair.estimate.queue_seconds, pair.estimate.compute_seconds,
          pair.estimate.transfer_seconds);
    }
    if (decode_ == nullptr) {
      return FailWith(ToGrpcStatus(UnavailableError("req={}: no decode worker available", id_)));
    }
    decode_->active.fetch_add(1);
  } else if (decode_ == nullptr) {
    decode_ = backend_->pool->PickDecode(tokens, AvoidDecode());
    if (decode_ == nullptr) {
      if (failovers_ > 0) return WaitForWorker("decode");
      return FailWith(ToGrpcStatus(UnavailableError("req={}: no decode worker available", id_)));
    }
    decode_->active.fetch_add(1);
  }
  int32_t resumed;
  reserve_req_.Clear();
  reserve_resp_.Clear();
  // The tokens whose KV the prefill worker computes and ships: the decode worker leaves out the
  // blocks its prefix cache holds (ticket.first_block), when every prefill worker can send so.
  const bool name_ids = backend_->pool->AllPrefillSendFromFirstBlock();
  if (name_ids) {
    for (int32_t id : prompt_) reserve_req_.add_prompt_token_ids(id);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    phase_ = CallPhase::kReserving;
    resumed = static_cast<int32_t>(generated_.size());
    if (name_ids) {
      for (int32_t id : generated_) reserve_req_.add_prompt_token_ids(id);
    }
  }
  grpc::ClientContext* ctx = NewContext(DeadlineIn(backend_->options.reserve_timeout));
  reserve_req_.set_request_id(worker_id_);
  reserve_req_.set_prompt_tokens(static_cast<int32_t>(prompt_.size()) + resumed);
  reserve_req_.set_max_tokens(request_.stopping().max_tokens() - resumed);
  reserve_req_.set_lease_ms(backend_->options.lease_ms);
  // cuda_ipc (and nccl on GPU workers) writes the decode worker's device pages, every other
  // transport its host pages: the worker registers the right ones now. Unplanned (a failover),
  // only a forced transport is named.
  if (!planned_transport_.empty()) {
    reserve_req_.set_kv_transport(planned_transport_);
  } else if (backend_->options.kv_transport != "auto") {
    reserve_req_.set_kv_transport(backend_->options.kv_transport);
  }
  TLOG_DEBUG("req={} reserve on {} as {} ({} prompt tokens, {} generated)", id_, decode_->address,
             worker_id_, prompt_.size(), resumed);
  decode_->stub->async()->Reserve(
      ctx, &reserve_req_, &reserve_resp_,
      [self = shared_from_this()](grpc::Status s) { self->OnReserved(s); });
}

void GenerateCall::OnReserved(const grpc::Status& status) {
  if (!status.ok()) {
    // The worker may have reserved even though this side saw an error (the call was cancelled
    // or timed out in flight, the reply was lost): release there, or the pages wait for the
    // lease. Refusals (RESOURCE_EXHAUSTED, INVALID_ARGUMENT, ...) reserved nothing.
    const auto code = status.error_code();
    if (code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
        code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::UNKNOWN ||
        code == grpc::StatusCode::INTERNAL) {
      SendRelease(decode_, worker_id_, /*maybe_absent=*/true);
    }
    if (RetryReserve(status)) return StartReserve();
    if (status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED && WaitForRoom()) return;
    TLOG_INFO("req={} reserve on {} failed: {}", id_, decode_->address, status.error_message());
    bool lost;
    {
      std::lock_guard<std::mutex> lock(mu_);
      lost = CancelledForLostWorker(status);
    }
    if (lost) {
      return FailWith(ToGrpcStatus(UnavailableError(
          "req={}: decode worker {} left the registry while reserving, and no other decode worker "
          "could take the request",
          id_, decode_->address)));
    }
    return FailWith(status);
  }
  if (failovers_ == 0) {
    queue_seconds_ = Seconds(Clock::now() - arrived_);
    backend_->metrics->queue_seconds().Observe(queue_seconds_);
  }
  bool ended;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reservation_open_ = true;
    phase_ = CallPhase::kPrefilling;
    ended = outcome_.has_value();
  }
  if (ended) return ReleaseReservation();
  StartPrefill();
}

bool GenerateCall::RetryReserve(const grpc::Status& status) {
  const auto code = status.error_code();
  bool lost;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (outcome_) return false;
    lost = CancelledForLostWorker(status);
  }
  if (code != grpc::StatusCode::RESOURCE_EXHAUSTED && code != grpc::StatusCode::UNAVAILABLE &&
      !lost) {
    return false;
  }
  if (static_cast<int32_t>(refused_by_.size()) + 1 >= backend_->options.max_reserve_attempts) {
    return false;
  }
  refused_by_.push_back(decode_);
  decode_->active.fetch_sub(1);
  const int64_t tokens = ReservedTokens();
  std::shared_ptr<DecodeWorkerRef> next = backend_->pool->PickDecode(tokens, AvoidDecode());
  if (next == nullptr) {
    decode_->active.fetch_add(1);  // the destructor gives it back
    return false;
  }
  TLOG_INFO("req={} reserve on {} refused ({}); trying {}", id_, decode_->address,
            status.error_message(), next->address);
  backend_->metrics->retries().Increment();
  decode_ = std::move(next);
  decode_->active.fetch_add(1);
  return true;
}

bool GenerateCall::WaitForRoom() {
  const Clock::time_point now = Clock::now();
  if (!room_wait_until_) room_wait_until_ = now + backend_->options.decode_room_wait;
  const int64_t total = static_cast<int64_t>(prompt_.size()) + request_.stopping().max_tokens();
  if (!backend_->pool->AnyDecodeCouldHold(total)) return false;
  room_pause_ =
      std::clamp(2 * room_pause_, std::chrono::milliseconds(10), std::chrono::milliseconds(500));
  const auto to_deadline = client_deadline_ - std::chrono::system_clock::now();
  if (now + room_pause_ > *room_wait_until_ || room_pause_ > to_deadline) return false;
  TLOG_DEBUG("req={} waits {} ms for KV pages on a decode worker", id_, room_pause_.count());
  std::lock_guard<std::mutex> lock(mu_);
  if (outcome_) return true;  // ended meanwhile: nothing more to do
  alarms_.push_back(std::make_unique<grpc::Alarm>());
  alarms_.back()->Set(std::chrono::system_clock::now() + room_pause_,
                      [self = shared_from_this()](bool fired) {
                        if (!fired) return self->Pump();  // cancelled: the call ended
                        // Every decode worker may take it now: StartReserve picks afresh.
                        self->backend_->metrics->retries().Increment();
                        self->refused_by_.clear();
                        self->decode_->active.fetch_sub(1);
                        self->decode_ = nullptr;
                        self->StartReserve();
                      });
  return true;
}

void GenerateCall::StartPrefill() {
  std::vector<const PrefillWorkerRef*> avoid;
  for (const auto& w : failed_prefill_) avoid.push_back(w.get());
  PrefillPreference preference;
  {
    std::lock_guard<std::mutex> lock(mu_);
    preference.tokens = ReservedTokens();
  }
  if (planned_prefill_ != nullptr && backend_->pool->InRotation(*planned_prefill_)) {
    prefill_ = std::move(planned_prefill_);
    preference.worker_id = prefill_->id;
    preference.cached_tokens = planned_cached_;
  } else {
    const CachedPrefix held = DeepestCached(backend_->pool->DeepestCachedPrefill(prompt_),
                                            backend_->prefill_affinity.Lookup(prompt_));
    preference.worker_id = held.worker_id;
    preference.cached_tokens = held.tokens;
    prefill_ = backend_->pool->PickPrefill(avoid, preference);
  }
  planned_prefill_ = nullptr;
  if (prefill_ == nullptr) {
    ReleaseReservation();
    if (failovers_ > 0) {  // wait with no pages held, then reserve afresh under a new id
      decode_->active.fetch_sub(1);
      decode_ = nullptr;
      worker_id_ = NewRequestId();
      return WaitForWorker("prefill");
    }
    return FailWith(ToGrpcStatus(UnavailableError("req={}: no prefill worker available", id_)));
  }
  auto transport =
      ChooseKvTransport(backend_->options.kv_transport, prefill_->host_id, prefill_->kv_transports,
                        decode_->host_id, decode_->kv_transports);
  if (transport.ok() && *transport == "shm" && reserve_resp_.ticket().shm_endpoint().empty()) {
    transport = FailedPreconditionError("decode worker {} gave no shm endpoint", decode_->id);
  }
  // A decode worker names its cuda_ipc endpoint (and on GPU workers its nccl one) only in a
  // reservation made for that transport, whose pages are its device pages. When the pair changed
  // since the plan (another prefill worker), choose among the transports the ticket names.
  for (std::string_view device_transport : {kCudaIpcTransport, std::string_view("nccl")}) {
    const auto& t = reserve_resp_.ticket();
    const bool named = device_transport == kCudaIpcTransport ? !t.cuda_ipc_endpoint().empty()
                                                             : !t.nccl_endpoint().empty();
    if (!transport.ok() || *transport != device_transport || named) continue;
    std::vector<std::string> others = decode_->kv_transports;
    std::erase(others, std::string(kCudaIpcTransport));
    std::erase(others, std::string("nccl"));
    if (!t.cuda_ipc_endpoint().empty()) others.emplace_back(kCudaIpcTransport);
    if (!t.nccl_endpoint().empty()) others.emplace_back("nccl");
    transport = backend_->options.kv_transport == device_transport
                    ? StatusOr<std::string>(FailedPreconditionError(
                          "decode worker {} gave no {} endpoint for this reservation", decode_->id,
                          device_transport))
                    : ChooseKvTransport(backend_->options.kv_transport, prefill_->host_id,
                                        prefill_->kv_transports, decode_->host_id, others);
  }
  if (!transport.ok()) {
    ReleaseReservation();
    return FailWith(
        ToGrpcStatus(Status(transport.status().code(),
                            fmt::format("req={}: prefill {} -> decode {}: {}", id_, prefill_->id,
                                        decode_->id, transport.status().message()))));
  }
  transport_ = *transport;
  prefill_req_.Clear();
  prefill_resp_.Clear();
  prefill_req_.set_request_id(worker_id_);
  for (int32_t id : prompt_) prefill_req_.add_prompt_token_ids(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int32_t id : generated_) prefill_req_.add_generated_token_ids(id);
  }
  prefill_tokens_counted_ =
      static_cast<int64_t>(prompt_.size()) + prefill_req_.generated_token_ids_size();
  prefill_->queued_tokens.fetch_add(prefill_tokens_counted_);
  prefill_work_counted_ =
      prefill_tokens_counted_ -
      (prefill_->id == preference.worker_id ? preference.cached_tokens : int64_t{0});
  prefill_->queued_work.fetch_add(prefill_work_counted_);
  *prefill_req_.mutable_sampling() = NormalizedSampling(request_.sampling());
  prefill_req_.set_logprobs(request_.logprobs());
  prefill_req_.set_top_logprobs(request_.top_logprobs());
  *prefill_req_.mutable_ticket() = reserve_resp_.ticket();
  if (*transport == "shm") {
    prefill_req_.mutable_ticket()->set_endpoint(reserve_resp_.ticket().shm_endpoint());
  } else if (*transport == "nccl") {
    prefill_req_.mutable_ticket()->set_endpoint(reserve_resp_.ticket().nccl_endpoint());
  } else if (*transport == kCudaIpcTransport) {
    prefill_req_.mutable_ticket()->set_endpoint(reserve_resp_.ticket().cuda_ipc_endpoint());
  }
  grpc::ClientContext* ctx = NewContext(DeadlineIn(backend_->options.prefill_timeout));
  TLOG_DEBUG("req={} prefill on {}", id_, prefill_->address);
  prefill_->stub->async()->Prefill(
      ctx, &prefill_req_, &prefill_resp_,
      [self = shared_from_this()](grpc::Status s) { self->OnPrefilled(s); });
}

void GenerateCall::OnPrefilled(const grpc::Status& status) {
  prefill_->queued_tokens.fetch_sub(prefill_tokens_counted_);
  prefill_->queued_work.fetch_sub(prefill_work_counted_);
  if (!status.ok()) {
    TLOG_INFO("req={} prefill on {} failed: {}", id_, prefill_->address, status.error_message());
    return FailOver(CallPhase::kPrefilling, status);  // releases the reservation
  }
  // Its prefix cache now holds the prompt's full blocks (a chat's next turn starts with them).
  backend_->prefill_affinity.Record(prompt_, prefill_->id);
  backend_->pool->rates().ObservePrefill(prefill_->id, prefill_resp_.computed_tokens(),
                                         prefill_resp_.compute_seconds());
  backend_->pool->rates().ObserveTransfer(prefill_->id, decode_->id, transport_,
                                          prefill_resp_.transfer_bytes(),
                                          prefill_resp_.transfer_wire_seconds());
  bool finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (outcome_.has_value()) {
      finished = true;
    } else {
      const Clock::time_point now = Clock::now();
      if (generated_.empty()) {
        first_token_at_ = now;
        last_token_at_ = now;
        backend_->metrics->time_to_first_token_seconds().Observe(Seconds(now - arrived_));
      }
      finished = AcceptTokenLocked(prefill_resp_.first_token_id(),
                                   want_logprobs_ ? &prefill_resp_.logprobs() : nullptr);
      if (!finished) {
        reservation_open_ = false;  // the Decode call owns the pages from here
        phase_ = CallPhase::kDecoding;
      }
    }
  }
  if (finished) {
    ReleaseReservation();
  } else {
    StartDecode();
  }
  Pump();
}

void GenerateCall::StartDecode() {
  decode_req_.Clear();
  decode_req_.set_request_id(worker_id_);
  for (int32_t id : prompt_) decode_req_.add_prompt_token_ids(id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    // generated_ ends with the prefill worker's token, which the Decode call gets apart.
    for (size_t i = 0; i + 1 < generated_.size(); ++i) {
      decode_req_.add_generated_token_ids(generated_[i]);
    }
    skip_decode_first_ = true;
  }
  decode_req_.set_first_token_id(prefill_resp_.first_token_id());
  *decode_req_.mutable_sampling() = NormalizedSampling(request_.sampling());
  // Stop strings are the router's alone (it owns the text); the decode worker stops on ids,
  // EOS and max_tokens, and the router cancels it when a stop string ends the request first.
  *decode_req_.mutable_stopping() = request_.stopping();
  decode_req_.mutable_stopping()->clear_stop();
  decode_req_.set_logprobs(request_.logprobs());
  decode_req_.set_top_logprobs(request_.top_logprobs());
  grpc::ClientContext* ctx = NewContext(DeadlineIn(backend_->options.decode_timeout));
  auto* reader = new DecodeReader(shared_from_this());
  reader->Begin(decode_->stub.get(), ctx, &decode_req_);
}

void GenerateCall::OnDecodeMessage(const v1::DecodeResponse& msg) {
  bool done = false;
  grpc::ClientContext* ctx;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (outcome_) return;
    ctx = current_ctx_;
    for (int i = 0; i < msg.token_ids_size() && !done; ++i) {
      if (skip_decode_first_) {  // the prefill worker's first token, already sent
        skip_decode_first_ = false;
        continue;
      }
      const v1::TokenLogprobs* lp =
          want_logprobs_ && i < msg.logprobs_size() ? &msg.logprobs(i) : nullptr;
      done = AcceptTokenLocked(msg.token_ids(i), lp);
    }
  }
  // Ended here (stop string) before the decode worker did: stop it so it frees the pages.
  if (done && msg.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) ctx->TryCancel();
  Pump();
}

void GenerateCall::OnDecodeDone(const grpc::Status& status) {
  bool failed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!outcome_) {
      if (status.ok()) {
        TLOG_WARN("req={} decode worker {} ended before the router saw a finish", id_,
                  decode_->address);
        CompleteLocked(v1::FINISH_REASON_STOP);
      } else {
        TLOG_INFO("req={} decode on {} failed: {}", id_, decode_->address, status.error_message());
        failed = true;
      }
    }
    if (!failed) phase_ = CallPhase::kIdle;
  }
  // A Decode call that failed may never have claimed its reservation (it did not reach the
  // worker, or was refused before it started): release it now rather than leave the pages
  // pinned for the whole lease. A no-op where the call did claim it (the worker then freed the
  // pages when the call ended).
  if (!status.ok()) SendRelease(decode_, worker_id_, /*maybe_absent=*/true);
  if (failed) return FailOver(CallPhase::kDecoding, status);
  Pump();
}
}  // namespace tandem
