// GenerateCall: admission, the output stream and the end of a call. The phases (reserve,
// prefill, decode) are in generate_call_phases.cc; failures and moves in
// generate_call_failover.cc.
#include "generate_call.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>

#include "generate_call_util.h"
#include "tandem/common/logging.h"
#include "tandem/engine/chat_template.h"
#include "tandem/router/request_validation.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem {

namespace generate_call_internal {

// "rtr-<random>-<counter>": unique across router restarts (workers key transfers by its hash).
std::string NewRequestId() {
  static const uint64_t prefix = [] {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
  }();
  static std::atomic<uint64_t> counter{0};
  return fmt::format("rtr-{:016x}-{}", prefix, counter.fetch_add(1));
}

}  // namespace generate_call_internal

using generate_call_internal::NewRequestId;
using generate_call_internal::Seconds;

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
  // The load first: once tandem_requests_running no longer counts this call, no decode worker
  // does either.
  if (decode_ != nullptr) decode_->active.fetch_sub(1);
  if (admitted_) backend_->admission.Leave();
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
