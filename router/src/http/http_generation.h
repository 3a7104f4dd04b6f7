// HttpGeneration: the GenerateCalls of one HTTP request (one per choice), read by the HTTP
// handler's thread as one ordered event queue.
//
// Each call writes to its own Output; a written message becomes an Event and the call's write
// completes only when the reader Acks it (so a slow or gone client holds the call back the way
// a gRPC stream does, and a failed socket write cancels it). Finish becomes a final Event.
//
// Lifetime: the destructor cancels every call still running, acks what was never read, and
// waits (bounded) until every call has finished with its output.
//
// Thread safety: Next / Ack / Cancel from the reader's thread; the calls' threads only push.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "../generate_call.h"

namespace tandem::http {

struct Event {
  int32_t index = 0;  // the choice
  // Exactly one of: a chunk, the final message, or (final_status set) the call's end.
  std::optional<v1::GenerateChunk> chunk;
  std::optional<v1::GenerateFinal> final;
  std::optional<grpc::Status> final_status;
};

class HttpGeneration {
 public:
  // Starts one call per request. `fit_max_tokens` > 0: requests with max_tokens 0 get as many
  // as fit in the context, at most that many.
  HttpGeneration(RouterBackend* backend, CallTracker* calls, bool draining,
                 std::chrono::system_clock::time_point deadline,
                 const std::vector<v1::GenerateRequest>& requests, int32_t fit_max_tokens);
  ~HttpGeneration();
  HttpGeneration(const HttpGeneration&) = delete;
  HttpGeneration& operator=(const HttpGeneration&) = delete;

  // The next event, or nullopt after `timeout` without one. A chunk or final event must be
  // Acked (ok = written to the client) before that call produces its next one.
  std::optional<Event> Next(std::chrono::milliseconds timeout);
  void Ack(const Event& event, bool ok);
  // The client went away: every call ends with CANCELLED.
  void Cancel();
  // Every call has finished (its final_status event was queued).
  bool done() const;
  int32_t size() const { return static_cast<int32_t>(outputs_.size()); }

 private:
  class Output;

  void Push(Event e);

  std::vector<std::unique_ptr<Output>> outputs_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  int32_t finished_ = 0;
};

}  // namespace tandem::http
