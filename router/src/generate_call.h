// One Generate stream: validate → tokenize → admit → Reserve on a decode worker → Prefill on a
// prefill worker → (first token) → Decode stream → chunks to the client → final message.
//
// Outbound work is one phase at a time (CallPhase):
//
//   kIdle ─Start─▶ kReserving ─reserved─▶ kPrefilling ─first token─▶ kDecoding ─end─▶ kIdle
//                     ▲  │ refused: next decode worker        │ failed        │ failed
//                     │  ▼                                    ▼               ▼
//                     └──────────────── failover (FailOver) ◀─────────────────┘
//
// Failover: when the prefill or decode worker fails under the request (the call ends with
// UNAVAILABLE / INTERNAL / UNKNOWN / ABORTED, or the worker left the registry and the call was
// cancelled for it), the request moves: a new reservation (on another decode worker when there
// is one), a prefill of prompt + the tokens already streamed, and a Decode from the next
// position with the same sampling (the sampler is keyed by seed and position, the kernels are
// batch-invariant), so the client sees one unchanged stream. Workers know each attempt by a
// fresh id, so a late Release of an old attempt never touches a new one. Bounded by
// RouterOptions::max_failovers and the client's deadline; a failover that cannot happen ends
// the call with UNAVAILABLE naming the failure and why it could not move.
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
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/alarm.h>
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

enum class CallPhase { kIdle, kReserving, kPrefilling, kDecoding };

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
  // From the output: a write has not completed for `timeout` (the client stopped reading).
  // Ends the call with DEADLINE_EXCEEDED naming --grpc-write-stall-timeout-ms, drops the queued
  // writes, cancels the outbound calls (workers free their pages), counts and logs it. Finish
  // follows the write in flight, so the output must make that write end (cancel the stream).
  void WriteStalled(std::chrono::milliseconds timeout);
  // The output is done with the call (after Finish); removes the call from `calls`.
  void OnOutputDone();
  // A drain ran out of time: ends the call with UNAVAILABLE naming `why` (after the writes
  // already queued), cancels its outbound calls (workers free their pages) and logs it.
  void Cut(const std::string& why);
  // `worker` (a PrefillWorkerRef or DecodeWorkerRef) left the registry (WorkerPool::SetOnLost):
  // when this call's current phase depends on it, its outbound call is cancelled and the
  // request fails over.
  void OnWorkerLost(const void* worker);
  // The request id the client knows it by (the client's, or one the router made).
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
  // The worker of `phase` failed with `status`: starts the next attempt, or ends the call.
  void FailOver(CallPhase phase, const grpc::Status& status);
  // A moving request found no `role` worker: starts the attempt again after a heartbeat
  // interval, or ends the call once RouterOptions::failover_wait or the deadline is spent.
  void WaitForWorker(const char* role);
  // Every decode worker tried refused the Reserve for pages (RESOURCE_EXHAUSTED): tries them
  // all again after a pause (RouterOptions::decode_room_wait). False when the wait is spent,
  // the deadline is near, or no decode worker's pool could ever hold the request.
  bool WaitForRoom();
  // Tokens a reservation holds pages for: the prompt, with the tokens generated before a
  // failover (a decode worker takes the pages of new tokens as they come).
  int64_t ReservedTokens() const;
  // Exclusions for the next pick: workers that failed this request, and refusals of this try.
  std::vector<const DecodeWorkerRef*> AvoidDecode() const;
  // Whether `status` from a worker call means the worker failed (not the request). Requires mu_.
  bool WorkerFailed(const grpc::Status& status) const;
  // `status` is the CANCELLED of a call OnWorkerLost cancelled. Requires mu_.
  bool CancelledForLostWorker(const grpc::Status& status) const {
    return worker_lost_ && status.error_code() == grpc::StatusCode::CANCELLED;
  }
  // Releases the open reservation, if any; `then` (optional) runs once the worker answered (or
  // at once when none was open), so a new Reserve on the same worker finds the pages free.
  void ReleaseReservation(std::function<void()> then = nullptr);
  // Release of attempt `worker_id` on `worker`; `maybe_absent`: NOT_FOUND (no such reservation)
  // and FAILED_PRECONDITION (a Decode call owns it) are expected; `then`
  // (optional) runs when it ended, whatever the outcome.
  void SendRelease(std::shared_ptr<DecodeWorkerRef> worker, std::string worker_id,
                   bool maybe_absent, std::function<void()> then = nullptr);
  // A context for the next outbound call, cancelled at once when the call already ended.
  grpc::ClientContext* NewContext(std::chrono::system_clock::time_point deadline);
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
  bool admitted_ = false;  // holds an admission slot (given back by the destructor)

  // The current attempt (written only while no outbound call is in flight, read by the
  // callbacks of that attempt). Workers know the attempt by `worker_id_`.
  std::string worker_id_;
  std::shared_ptr<PrefillWorkerRef> prefill_;
  std::shared_ptr<DecodeWorkerRef> decode_;
  // Workers that failed this request (kept alive so that their addresses stay unique) and
  // decode workers that refused this attempt's Reserve.
  std::vector<std::shared_ptr<DecodeWorkerRef>> failed_decode_;
  std::vector<std::shared_ptr<PrefillWorkerRef>> failed_prefill_;
  std::vector<std::shared_ptr<DecodeWorkerRef>> refused_by_;
  // The prefill worker PickPair chose with the decode worker (taken by StartPrefill when it is
  // still in rotation), and the prompt tokens it likely holds.
  std::shared_ptr<PrefillWorkerRef> planned_prefill_;
  int64_t planned_cached_ = 0;
  std::string planned_transport_;  // the planned pair's KV transport (empty when unplanned)
  std::string transport_;          // of the current attempt's pair
  int64_t prefill_tokens_counted_ = 0;
  int64_t prefill_work_counted_ = 0;  // of those, the expected uncached part (queued_work)
  int32_t failovers_ = 0;
  std::optional<Clock::time_point> wait_until_;  // WaitForWorker's limit for this failover
  // WaitForRoom's limit and its next pause.
  std::optional<Clock::time_point> room_wait_until_;
  std::chrono::milliseconds room_pause_{0};
  std::string last_failure_;  // "decode worker host:port failed (why)": what made it move
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
  CallPhase phase_ = CallPhase::kIdle;  // guarded by mu_
  // Every outbound context so far (TryCancel is safe on finished ones); the current phase's
  // call uses `current_ctx_`. Guarded by mu_.
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs_;
  grpc::ClientContext* current_ctx_ = nullptr;
  bool worker_lost_ = false;  // the current call was cancelled because its worker was lost
  // ... and that worker was the decode worker of a Prefill call (its KV receiver).
  bool receiver_lost_ = false;
  // WaitForWorker's retries (one per wait; a callback may set the next), cancelled with the
  // outbound calls.
  std::vector<std::unique_ptr<grpc::Alarm>> alarms_;
  std::optional<Clock::time_point> failed_at_;  // a failover waits for its first token
  std::unique_ptr<TextStream> text_;            // guarded by mu_
  std::vector<int32_t> generated_;              // tokens streamed so far; guarded by mu_
  bool skip_decode_first_ = true;               // D's stream repeats the first token
  bool reservation_open_ = false;               // reserved and neither decoded nor released
  std::deque<v1::GenerateResponse> out_;        // queued writes
  v1::GenerateResponse writing_msg_;
  bool writing_ = false;
  bool finish_called_ = false;
  // The call's result once decided: OK after the final message, or the error it ends with.
  std::optional<grpc::Status> outcome_;
};

}  // namespace tandem
