#include "generate_call.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "tandem/common/logging.h"
#include "tandem/engine/chat_template.h"
#include "tandem/router/kv_transport_choice.h"
#include "tandem/router/request_validation.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem {

namespace {

// The deeper of what the workers reported (heartbeats) and what this router recorded when it
// routed (the record covers pages cached since a worker's last report; the report knows of
// evictions and of other routers' requests).
CachedPrefix DeepestCached(CachedPrefix reported, const std::optional<AffinityMatch>& recorded) {
  if (recorded && recorded->matched_tokens > reported.tokens) {
    return {recorded->worker_id, recorded->matched_tokens};
  }
  return reported;
}

double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// "rtr-<random>-<counter>": unique across router restarts (workers key transfers by its hash).
std::string NewRequestId() {
  static const uint64_t prefix = [] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }();
  static std::atomic<uint64_t> counter{0};
  return fmt::format("rtr-{:016x}-{}", prefix, counter.fetch_add(1));
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

GenerateCall::GenerateCall(RouterBackend* backend, CallTracker* calls,
                           std::chrono::system_clock::time_point deadline,
                           const v1::GenerateRequest& request)
    : backend_(backend),
      calls_(calls),
      client_deadline_(deadline),
      request_(request),
      arrived_(Clock::now()) {
  worker_id_ = NewRequestId();
  id_ = request_.request_id().empty() ? worker_id_ : request_.request_id();
  want_logprobs_ = request_.logprobs();
}

void GenerateCall::Start(GenerateOutput* output, bool draining) {
  output_ = output;
  calls_->Add(shared_from_this());
  Begin(draining);
}

void GenerateCall::OnOutputDone() { calls_->Remove(this); }

void GenerateCall::Cut(const std::string& why) {
  TLOG_WARN("req={} cut: {}", id_, why);
  FailWith(ToGrpcStatus(UnavailableError("req={}: {}", id_, why)));
}

GenerateCall::~GenerateCall() {
  if (admitted_) backend_->admission.Leave();
  if (decode_ != nullptr) decode_->active.fetch_sub(1);
}

grpc::ClientContext* GenerateCall::NewContext(std::chrono::system_clock::time_point deadline) {
  std::lock_guard<std::mutex> lock(mu_);
  ctxs_.push_back(std::make_unique<grpc::ClientContext>());
  grpc::ClientContext* ctx = ctxs_.back().get();
  ctx->set_deadline(deadline);
  AttachClusterKey(ctx, backend_->options.cluster_key);
  current_ctx_ = ctx;
  worker_lost_ = false;
  receiver_lost_ = false;
  if (outcome_) ctx->TryCancel();
  return ctx;
}

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

int64_t GenerateCall::ReservedTokens() const {
  return static_cast<int64_t>(prompt_.size() + generated_.size());
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

void GenerateCall::Begin(bool draining) {
  if (backend_ == nullptr) return FailWith(ToGrpcStatus(UnavailableError("router is loading")));
  if (draining) return FailWith(ToGrpcStatus(UnavailableError("router is draining")));
  auto prepare_then_reserve = [self = shared_from_this()] {
    {
      std::lock_guard<std::mutex> lock(self->mu_);
      if (self->outcome_) return;  // cancelled while it waited: finished already
    }
    if (Status st = self->Prepare(); !st.ok()) {
      TLOG_INFO("req={} refused: {}", self->id_, st.ToString());
      return self->FailWith(ToGrpcStatus(st));
    }
    self->StartReserve();
  };
  if (backend_->tokenize == nullptr) return prepare_then_reserve();  // a backend built by hand
  if (Status st = backend_->tokenize->Submit(prepare_then_reserve); !st.ok()) {
    TLOG_INFO("req={} refused: {}", id_, st.ToString());
    return FailWith(ToGrpcStatus(st));
  }
}

Status GenerateCall::Prepare() {
  const bool fit = fit_max_tokens_ > 0 && request_.stopping().max_tokens() == 0;
  if (fit) request_.mutable_stopping()->set_max_tokens(1);  // validated as 1, fitted below
  TANDEM_RETURN_IF_ERROR(ValidateGenerateRequest(request_));
  if (!request_.sampling().has_seed()) {  // unseeded: a fresh seed, reported in the final
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    request_.mutable_sampling()->set_seed(rng());
  }
  const Tokenizer& tok = *backend_->tokenizer;
  switch (request_.input_case()) {
    case v1::GenerateRequest::kTokenIds:
      prompt_.assign(request_.token_ids().ids().begin(), request_.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kChat: {
      if (!backend_->chat_format.ok()) return backend_->chat_format.status();
      std::vector<ChatMessage> messages;
      for (const auto& m : request_.chat().messages()) messages.push_back({m.role(), m.content()});
      auto text = ApplyChatTemplate(*backend_->chat_format, messages, true);
      if (!text.ok()) {
        return InvalidArgumentError("chat.messages: {}", text.status().message());
      }
      TANDEM_ASSIGN_OR_RETURN(prompt_, tok.Encode(*text, /*add_special_tokens=*/true));
      break;
    }
    default:
      TANDEM_ASSIGN_OR_RETURN(prompt_, tok.Encode(request_.text(), /*add_special_tokens=*/true));
      break;
  }
  const int64_t pool = backend_->pool->LargestDecodePoolTokens();  // -1: not known
  if (fit) {
    // The rest of the context, or of the largest decode pool when that is smaller (a request
    // longer than every pool would be refused: it could never finish).
    int64_t limit = backend_->meta.max_context_tokens;
    if (pool > 0) limit = std::min(limit, pool);
    const int64_t room = limit - static_cast<int64_t>(prompt_.size());
    request_.mutable_stopping()->set_max_tokens(
        static_cast<int32_t>(std::clamp<int64_t>(room, 1, fit_max_tokens_)));
  }
  const auto& stopping = request_.stopping();
  TANDEM_RETURN_IF_ERROR(ValidatePrompt(prompt_, stopping.max_tokens(),
                                        backend_->meta.max_context_tokens,
                                        backend_->meta.vocab_size));
  // Longer than every decode worker's KV pool: it could never finish anywhere, so it is the
  // request's error (400), not a wait or a 429.
  if (pool > 0 && static_cast<int64_t>(prompt_.size()) + stopping.max_tokens() > pool) {
    return InvalidArgumentError(
               "prompt ({} tokens) + stopping.max_tokens ({}) exceeds the largest decode "
               "worker's KV cache ({} tokens)",
               prompt_.size(), stopping.max_tokens(), pool)
        .WithField("stopping.max_tokens");
  }
  for (int32_t id : stopping.stop_token_ids()) {
    if (id < 0 || id >= backend_->meta.vocab_size) {
      return InvalidArgumentError("stopping.stop_token_ids: {} is outside the vocabulary", id);
    }
  }
  TextStreamOptions to;
  to.max_tokens = stopping.max_tokens();
  to.eos_ids = backend_->eos_ids;
  to.ignore_eos = stopping.ignore_eos();
  to.stop_token_ids.assign(stopping.stop_token_ids().begin(), stopping.stop_token_ids().end());
  to.stop_strings.assign(stopping.stop().begin(), stopping.stop().end());
  text_ = std::make_unique<TextStream>(&tok, std::move(to));
  if (backend_->pool->num_prefill() == 0 || backend_->pool->num_decode() == 0) {
    return UnavailableError("no prefill or no decode worker configured");
  }
  TANDEM_RETURN_IF_ERROR(backend_->admission.TryEnter());
  admitted_ = true;
  backend_->metrics->prompt_tokens().Increment(static_cast<double>(prompt_.size()));
  return Status::Ok();
}

std::chrono::system_clock::time_point GenerateCall::DeadlineIn(
    std::chrono::milliseconds timeout) const {
  return std::min(std::chrono::system_clock::now() + timeout, client_deadline_);
}

void GenerateCall::StartReserve() {
  const int64_t tokens = ReservedTokens();
  planned_prefill_ = nullptr;
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
  if (transport.ok() && *transport == "nccl" && reserve_resp_.ticket().nccl_endpoint().empty()) {
    transport = FailedPreconditionError("decode worker {} gave no nccl endpoint", decode_->id);
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

bool GenerateCall::AcceptTokenLocked(int32_t token, const v1::TokenLogprobs* logprobs) {
  if (outcome_) return true;
  const Clock::time_point now = Clock::now();
  if (!generated_.empty()) {
    backend_->metrics->inter_token_latency_seconds().Observe(Seconds(now - last_token_at_));
  }
  if (failed_at_) {
    backend_->metrics->failover_seconds().Observe(Seconds(now - *failed_at_));
    failed_at_.reset();
  }
  last_token_at_ = now;
  generated_.push_back(token);
  backend_->metrics->generation_tokens().Increment();
  v1::GenerateResponse r;
  v1::GenerateChunk* chunk = r.mutable_chunk();
  chunk->add_token_ids(token);
  const TextStream::Finish f = text_->Add(token, chunk->mutable_text());
  if (want_logprobs_) {
    if (logprobs != nullptr) {
      *chunk->add_logprobs() = *logprobs;
    } else {
      chunk->add_logprobs();
    }
  }
  out_.push_back(std::move(r));
  if (f == TextStream::Finish::kNone) return false;
  CompleteLocked(f == TextStream::Finish::kLength ? v1::FINISH_REASON_LENGTH
                                                  : v1::FINISH_REASON_STOP);
  return true;
}

void GenerateCall::CompleteLocked(v1::FinishReason reason) {
  const Clock::time_point now = Clock::now();
  v1::GenerateResponse r;
  v1::GenerateFinal* f = r.mutable_final();
  f->set_finish_reason(reason);
  f->mutable_usage()->set_prompt_tokens(static_cast<int32_t>(prompt_.size()));
  f->mutable_usage()->set_completion_tokens(text_->num_generated());
  v1::Timings* t = f->mutable_timings();
  t->set_queue_seconds(queue_seconds_);
  t->set_prefill_seconds(prefill_resp_.compute_seconds());
  t->set_transfer_seconds(prefill_resp_.transfer_seconds());
  t->set_first_token_seconds(Seconds(first_token_at_ - arrived_));
  t->set_decode_seconds(Seconds(now - first_token_at_));
  t->set_total_seconds(Seconds(now - arrived_));
  f->set_request_id(id_);
  f->set_seed(request_.sampling().seed());
  f->set_failovers(failovers_);
  if (prefill_ != nullptr) f->set_prefill_worker(prefill_->address);
  if (decode_ != nullptr) f->set_decode_worker(decode_->address);
  out_.push_back(std::move(r));
  outcome_ = grpc::Status::OK;
  if (decode_ != nullptr && failovers_ == 0 && !generated_.empty()) {
    // The decode worker now caches the prompt and the answer but the last token (its K/V is
    // never written).
    std::vector<int32_t> held(prompt_);
    held.insert(held.end(), generated_.begin(), generated_.end() - 1);
    backend_->affinity.Record(held, decode_->id);
  }
  backend_->metrics->e2e_request_latency_seconds().Observe(t->total_seconds());
  TLOG_INFO("req={} done: {} prompt + {} generated tokens in {:.3f} s{}", id_, prompt_.size(),
            text_->num_generated(), t->total_seconds(),
            failovers_ > 0 ? fmt::format(" after {} failover(s)", failovers_) : "");
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

void GenerateCall::FailWith(grpc::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!outcome_) outcome_ = std::move(status);
  }
  CancelOutbound();
  Pump();
}

void GenerateCall::CancelOutbound() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& c : ctxs_) c->TryCancel();
  for (auto& a : alarms_) a->Cancel();
}

void GenerateCall::Cancel() {
  bool by_client = false;  // the call had not ended otherwise (e.g. WriteStalled cancels it)
  {
    std::lock_guard<std::mutex> lock(mu_);
    out_.clear();
    if (!outcome_ || outcome_->ok()) {
      outcome_ = ToGrpcStatus(CancelledError("req={} cancelled", id_));
      by_client = true;
    }
  }
  if (by_client) TLOG_INFO("req={} cancelled by the client or its deadline", id_);
  CancelOutbound();
  Pump();
}

void GenerateCall::WriteStalled(std::chrono::milliseconds timeout) {
  TLOG_WARN("req={}: the client did not read the response stream for {} ms; cancelled", id_,
            timeout.count());
  if (backend_ != nullptr) {
    backend_->metrics->grpc_write_stalls().Increment();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    out_.clear();
    if (!outcome_ || outcome_->ok()) {
      outcome_ = ToGrpcStatus(
          DeadlineExceededError("req={}: the client did not read the response stream for {} ms "
                                "(--grpc-write-stall-timeout-ms)",
                                id_, timeout.count()));
    }
  }
  CancelOutbound();
  Pump();
}

void GenerateCall::Pump() {
  std::unique_lock<std::mutex> lock(mu_);
  if (writing_ || finish_called_) return;
  if (!out_.empty()) {
    writing_ = true;
    writing_msg_ = std::move(out_.front());
    out_.pop_front();
    lock.unlock();
    output_->StartWrite(&writing_msg_);
    return;
  }
  if (outcome_) {
    finish_called_ = true;
    grpc::Status status = *outcome_;
    lock.unlock();
    if (backend_ != nullptr && !status.ok()) {
      backend_->metrics->CountError(static_cast<StatusCode>(status.error_code()));
    }
    output_->Finish(status);
  }
}

void GenerateCall::OnWriteDone(bool ok) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {
      out_.clear();
      if (!outcome_ || outcome_->ok()) {
        outcome_ = ToGrpcStatus(CancelledError("req={}: the client went away", id_));
      }
    }
  }
  if (!ok) CancelOutbound();
  Pump();
}

}  // namespace tandem
