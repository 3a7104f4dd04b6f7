// One Generate stream: validate → tokenize → admit → Reserve on a decode worker → Prefill on a
// prefill worker → (first token) → Decode stream → chunks to the client → final message.
//
// The call does not know its transport: it writes GenerateResponse messages to a
// GenerateOutput (the gRPC stream reactor in router_service.cc, an HTTP response in
// src/http/), one write in flight at a time, and ends it with one Finish.
//
// Every outbound call is asynchronous (callback client API) and carries a deadline; no reaction
// blocks. Lifetime: the object is shared by its output and every outbound callback (the output
// holds a reference until it is done; the last reference frees it). Client cancellation or
// deadline (Cancel) cancels the outbound calls so workers free their pages; a reservation that
// will not be decoded is released on the decode worker. Finish is called exactly once, after
// the queued writes.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include "tandem/engine/text_stream.h"
#include "tandem/router/router_service.h"
#include "tandem/v1/generate.pb.h"
#include "tandem/v1/internal.pb.h"

namespace tandem {

// Where a call's messages go. The call invokes StartWrite with at most one write in flight
// (the output answers with GenerateCall::OnWriteDone), then Finish exactly once, after which it
// never touches the output again.
class GenerateOutput {
 public:
  virtual ~GenerateOutput() = default;
  // `msg` stays valid until the matching OnWriteDone.
  virtual void StartWrite(const v1::GenerateResponse* msg) = 0;
  virtual void Finish(const grpc::Status& status) = 0;
};

class GenerateCall : public std::enable_shared_from_this<GenerateCall> {
 public:
  // `backend` nullptr = still loading (UNAVAILABLE). `deadline`: the client's. `calls` tracks
  // the call from Start until its output is done (drain waits for them, then cuts the rest).
  GenerateCall(RouterBackend* backend, CallTracker* calls,
               std::chrono::system_clock::time_point deadline, const v1::GenerateRequest& request);
  ~GenerateCall();

  // Before Start: a request with stopping.max_tokens 0 gets as many tokens as fit in the
  // context after its prompt, at most `limit` (the HTTP API's default). 0 = off (the default:
  // max_tokens 0 is INVALID_ARGUMENT).
  void set_fit_max_tokens(int32_t limit) { fit_max_tokens_ = limit; }
  // Starts the call writing to `output`, which must stay valid until Finish; `draining`
  // refuses with UNAVAILABLE. Once.
  void Start(GenerateOutput* output, bool draining);
  // From the output: a write ended (`ok` false: the client is gone).
  void OnWriteDone(bool ok);
  // The client went away or its deadline passed: ends the call with CANCELLED.
  void Cancel();
  // The output is done with the call (after Finish); removes the call from `calls`.
  void OnOutputDone();
  // A drain ran out of time: ends the call with UNAVAILABLE naming `why` (after the writes
  // already queued), cancels its outbound calls (workers free their pages) and logs it.
  void Cut(const std::string& why);
  // The request id the workers know it by.
  const std::string& id() const { return id_; }

  // From the Decode stream reader.
  void OnDecodeMessage(const v1::DecodeResponse& msg);
  void OnDecodeDone(const grpc::Status& status);

 private:
  using Clock = std::chrono::steady_clock;

  void Begin(bool draining);
  Status Prepare();  // validation, templating, tokenization, admission
  void StartReserve();
  // Another decode worker after a refusal; false when none is left or attempts are used up.
  bool RetryReserve(const grpc::Status& status);
  void OnReserved(const grpc::Status& status);
  void StartPrefill();
  void OnPrefilled(const grpc::Status& status);
  void StartDecode();
  void ReleaseReservation();
  // Fire-and-forget Release of this request on `worker`; `maybe_absent`: NOT_FOUND is expected.
  void SendRelease(std::shared_ptr<DecodeWorkerRef> worker, bool maybe_absent);
  // Feeds one token through the text stream into a chunk; true when the request ended with it.
  // Requires mu_.
  bool AcceptTokenLocked(int32_t token, const v1::TokenLogprobs* logprobs);
  void CompleteLocked(v1::FinishReason reason);
  void FailWith(grpc::Status status);
  void CancelOutbound();
  std::chrono::system_clock::time_point DeadlineIn(std::chrono::milliseconds timeout) const;
  void Pump();

  RouterBackend* backend_;
  CallTracker* calls_;
  GenerateOutput* output_ = nullptr;  // set by Start; not touched after Finish
  std::chrono::system_clock::time_point client_deadline_;
  v1::GenerateRequest request_;
  std::string id_;
  std::vector<int32_t> prompt_;
  bool want_logprobs_ = false;
  int32_t fit_max_tokens_ = 0;
  bool admitted_ = false;

  std::shared_ptr<PrefillWorkerRef> prefill_;
  std::shared_ptr<DecodeWorkerRef> decode_;
  std::vector<const DecodeWorkerRef*> refused_by_;  // decode workers whose Reserve failed
  std::vector<std::shared_ptr<DecodeWorkerRef>> refused_refs_;  // keeps refused_by_ valid
  int64_t prefill_tokens_counted_ = 0;

  // Outbound calls; contexts live as long as this object, TryCancel is safe at any time. A
  // Reserve refused by one decode worker is retried on another with a fresh context.
  std::vector<std::unique_ptr<grpc::ClientContext>> reserve_ctxs_;  // guarded by mu_
  grpc::ClientContext prefill_ctx_;
  grpc::ClientContext decode_ctx_;
  v1::ReserveRequest reserve_req_;
  v1::ReserveResponse reserve_resp_;
  v1::PrefillRequest prefill_req_;
  v1::PrefillResponse prefill_resp_;
  v1::DecodeRequest decode_req_;

  const Clock::time_point arrived_;
  Clock::time_point first_token_at_;
  Clock::time_point last_token_at_;  // guarded by mu_
  double queue_seconds_ = 0.0;

  std::mutex mu_;
  std::unique_ptr<TextStream> text_;  // guarded by mu_
  bool skip_decode_first_ = true;     // D's stream repeats the first token
  bool cancelled_ = false;            // client went away / deadline
  bool decode_started_ = false;
  bool reservation_open_ = false;         // reserved and neither decoded nor released
  std::deque<v1::GenerateResponse> out_;  // queued writes
  v1::GenerateResponse writing_msg_;
  bool writing_ = false;
  bool finish_called_ = false;
  std::optional<grpc::Status> outcome_;
};

}  // namespace tandem
