#include "decode_stream.h"

#include "tandem/common/logging.h"
#include "tandem/rpc/grpc_status.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {

DecodeStream* DecodeStream::Create(DecodeBackend* backend, DecodeStreams* streams,
                                   const v1::DecodeRequest& request) {
  auto stream = std::make_shared<DecodeStream>(backend, streams, request);
  stream->self_ = stream;
  streams->Add(stream);
  stream->Start();
  return stream.get();
}

DecodeStream::DecodeStream(DecodeBackend* backend, DecodeStreams* streams,
                           const v1::DecodeRequest& request)
    : backend_(backend),
      streams_(streams),
      id_(request.request_id()),
      started_(std::chrono::steady_clock::now()) {
  gen_.prompt.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  gen_.generated.assign(request.generated_token_ids().begin(), request.generated_token_ids().end());
  // Invalid sampling is reported by Start(), which ends the stream.
  StatusOr<SamplingParams> sampling =
      SamplingForRequest(request.sampling(), request.logprobs(), request.top_logprobs());
  if (sampling.ok()) {
    gen_.sampling = *sampling;
  } else {
    invalid_ = sampling.status();
  }
  FromProto(request.stopping(), &gen_);
  first_token_ = request.first_token_id();
  want_logprobs_ = request.logprobs();
}

void DecodeStream::Start() {
  if (backend_ == nullptr) return EndWith(ToGrpcStatus(UnavailableError("model is loading")));
  if (id_.empty()) {
    return EndWith(ToGrpcStatus(InvalidArgumentError("request_id must not be empty")));
  }
  if (gen_.max_tokens < 1) {
    return EndWith(ToGrpcStatus(
        InvalidArgumentError("stopping.max_tokens must be >= 1, got {}", gen_.max_tokens)));
  }
  const auto resumed = static_cast<int32_t>(gen_.generated.size());
  if (resumed >= gen_.max_tokens) {
    return EndWith(ToGrpcStatus(
        InvalidArgumentError("generated_token_ids: {} tokens, but stopping.max_tokens is {}",
                             resumed, gen_.max_tokens)));
  }
  if (!invalid_.ok()) return EndWith(ToGrpcStatus(invalid_));
  {
    std::lock_guard<std::mutex> lock(mu_);
    attached_ = true;
  }
  std::shared_ptr<DecodeStream> self = shared_from_this();
  std::vector<int32_t> ids = gen_.prompt;
  ids.insert(ids.end(), gen_.generated.begin(), gen_.generated.end());
  Status st = backend_->table->Attach(
      id_, static_cast<int32_t>(gen_.prompt.size()) + resumed, gen_.max_tokens - resumed,
      [self](const Status& s, std::vector<int32_t> blocks, int32_t cached_blocks) {
        self->OnTransferReady(s, std::move(blocks), cached_blocks);
      },
      ids);
  if (!st.ok()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      attached_ = false;
    }
    TLOG_INFO("req={} decode refused: {}", id_, st.ToString());
    return EndWith(ToGrpcStatus(st));
  }
  bool cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled = cancelled_ && attached_;
  }
  if (cancelled) backend_->table->CancelAttached(id_);  // OnCancel raced with Attach
}

void DecodeStream::OnTransferReady(const Status& status, std::vector<int32_t> blocks,
                                   int32_t cached_blocks) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    attached_ = false;
  }
  if (!status.ok()) {
    TLOG_INFO("req={} KV transfer failed: {}", id_, status.ToString());
    if (status.code() != StatusCode::kCancelled)
      backend_->metrics->kv_transfer_failures().Increment();
    return EndWith(ToGrpcStatus(status));
  }
  const int64_t id = backend_->loop->Submit(gen_, std::move(blocks), first_token_,
                                            shared_from_this(), cached_blocks);
  bool cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    loop_id_ = id;
    cancelled = cancelled_;
  }
  if (cancelled) backend_->loop->Cancel(id);
}

void DecodeStream::OnEvent(const TokenEvent& ev) {
  bool finished = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (outcome_) return;
    if (ev.finish == FinishReason::kCancelled) {
      outcome_ = ToGrpcStatus(CancelledError("req={} cancelled", id_));
    } else {
      const auto now = std::chrono::steady_clock::now();
      if (!sent_first_) {  // the prefill worker's first token: joined the batch
        sent_first_ = true;
        const double waited = std::chrono::duration<double>(now - started_).count();
        pending_.set_transfer_wait_seconds(waited);
        backend_->metrics->queue_seconds().Observe(waited);
      } else {
        backend_->metrics->generation_tokens().Increment();
        backend_->metrics->inter_token_latency_seconds().Observe(
            std::chrono::duration<double>(now - last_token_at_).count());
      }
      last_token_at_ = now;
      pending_.add_token_ids(ev.token);
      pending_.mutable_text()->append(ev.text);
      if (want_logprobs_) ToProto(ev.sample, pending_.add_logprobs());
      has_pending_ = true;
      if (ev.finish != FinishReason::kNone) {
        pending_.set_finish_reason(ev.finish == FinishReason::kLength ? v1::FINISH_REASON_LENGTH
                                                                      : v1::FINISH_REASON_STOP);
        outcome_ = grpc::Status::OK;
        finished = true;
      }
    }
  }
  if (finished) backend_->table->MarkDone(id_);
  Pump();
}

void DecodeStream::OnError(const Status& status) {
  TLOG_INFO("req={} decode failed: {}", id_, status.ToString());
  if (backend_ != nullptr) backend_->table->MarkDone(id_);
  EndWith(ToGrpcStatus(status));
}

void DecodeStream::EndWith(grpc::Status status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!outcome_) outcome_ = std::move(status);
  }
  Pump();
}

void DecodeStream::Pump() {
  std::unique_lock<std::mutex> lock(mu_);
  if (writing_ || finish_called_) return;
  if (has_pending_) {
    writing_ = true;
    writing_msg_ = std::move(pending_);
    pending_.Clear();
    has_pending_ = false;
    lock.unlock();
    StartWrite(&writing_msg_);
    return;
  }
  if (outcome_) {
    finish_called_ = true;
    grpc::Status status = *outcome_;
    lock.unlock();
    if (!status.ok() && backend_ != nullptr) {
      backend_->metrics->CountError(static_cast<StatusCode>(status.error_code()));
    }
    Finish(status);
  }
}

void DecodeStream::OnWriteDone(bool ok) {
  if (!ok) {
    CancelWork();
    std::lock_guard<std::mutex> lock(mu_);
    has_pending_ = false;
    if (!outcome_ || outcome_->ok()) {
      outcome_ = ToGrpcStatus(CancelledError("req={}: the client went away", id_));
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
  }
  Pump();
}

void DecodeStream::OnCancel() {
  TLOG_INFO("req={} Decode call cancelled (client or deadline)", id_);
  CancelWork();
  EndWith(ToGrpcStatus(CancelledError("req={} cancelled", id_)));
}

void DecodeStream::Cut(const std::string& why) {
  TLOG_WARN("req={} cut: {}", id_, why);
  EndWith(ToGrpcStatus(UnavailableError("req={}: {}", id_, why)));  // first: wins over CANCELLED
  CancelWork();
}

void DecodeStream::CancelWork() {
  bool attached;
  std::optional<int64_t> loop_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_) return;
    cancelled_ = true;
    attached = attached_;
    loop_id = loop_id_;
  }
  if (backend_ == nullptr) return;
  if (loop_id) {
    backend_->loop->Cancel(*loop_id);
  } else if (attached) {
    backend_->table->CancelAttached(id_);
  }
}

void DecodeStream::OnDone() {
  std::shared_ptr<DecodeStream> self;
  bool ok;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ok = outcome_ && outcome_->ok();
  }
  if (!ok) CancelWork();  // a finished request has nothing left to cancel
  if (backend_ != nullptr) {
    const auto& alloc = backend_->engine->kv_cache().allocator();
    TLOG_INFO("req={} Decode call done ({}); pages used {}/{}", id_, ok ? "ok" : "not ok",
              alloc.num_used(), alloc.num_blocks());
  }
  streams_->Remove(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    self = std::move(self_);
  }
  // `self` may be the last reference: nothing touches members after this point.
}

}  // namespace tandem
