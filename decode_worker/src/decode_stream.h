// DecodeStream: the reactor of one Decode call.
//
// Life: created by DecodeService::Decode, which calls Start(). Start validates the request and
// attaches to the reservation; when the KV has arrived the ReservationTable calls
// OnTransferReady, which submits the request to the EngineLoop; the loop calls OnEvent /
// OnError; tokens are queued and written one StartWrite at a time (tokens that arrive while a
// write is outstanding are merged into the next message); Finish is called exactly once, by
// Pump, when nothing is being written and the outcome is known. Cancellation (OnCancel, a
// failed write, OnDone) cancels the transfer or the engine request, which frees the pages.
//
// Ownership: the object is held by shared_ptr — by itself until OnDone, and by the
// ReservationTable / EngineLoop while they may still call it — so late callbacks never touch
// freed memory. After Finish every callback is ignored.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <grpcpp/grpcpp.h>

#include "tandem/decode_worker/decode_service.h"

namespace tandem {

class DecodeStream final : public grpc::ServerWriteReactor<v1::DecodeResponse>,
                           public TokenSink,
                           public std::enable_shared_from_this<DecodeStream> {
 public:
  // Creates the stream; it keeps itself alive until OnDone.
  static DecodeStream* Create(DecodeBackend* backend, DecodeStreams* streams,
                              const v1::DecodeRequest& request);
  DecodeStream(DecodeBackend* backend, DecodeStreams* streams, const v1::DecodeRequest& request);

  // A drain ran out of time: ends the call with UNAVAILABLE naming `why` (after the tokens
  // already queued) and cancels its work, which frees its pages.
  void Cut(const std::string& why);
  const std::string& id() const { return id_; }

  // TokenSink (engine loop thread).
  void OnEvent(const TokenEvent& event) override;
  void OnError(const Status& status) override;

  // Reactions.
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  void Start();
  void OnTransferReady(const Status& status, std::vector<int32_t> blocks, int32_t cached_blocks);
  // Records the outcome (first one wins) and pumps.
  void EndWith(grpc::Status status);
  // Cancels whatever still runs for this request (transfer wait or engine request).
  void CancelWork();
  // Starts the next write, or Finish once nothing is left to write.
  void Pump();

  DecodeBackend* backend_;
  DecodeStreams* streams_;
  std::string id_;
  GenerationRequest gen_;
  int32_t first_token_ = -1;
  bool want_logprobs_ = false;  // the request's logprobs flag (tandem/worker/proto_convert.h)
  Status invalid_;              // the request's sampling, when invalid: Start() ends with it
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_token_at_;  // guarded by mu_

  std::mutex mu_;
  std::shared_ptr<DecodeStream> self_;  // until OnDone
  bool attached_ = false;               // waiting in the ReservationTable
  std::optional<int64_t> loop_id_;      // submitted to the EngineLoop
  bool cancelled_ = false;
  bool sent_first_ = false;
  v1::DecodeResponse pending_;  // tokens not yet handed to StartWrite
  bool has_pending_ = false;
  v1::DecodeResponse writing_msg_;  // the message of the outstanding StartWrite
  bool writing_ = false;
  std::optional<grpc::Status> outcome_;
  bool finish_called_ = false;
};

}  // namespace tandem
