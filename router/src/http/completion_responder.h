// Answers one parsed /v1/completions or /v1/chat/completions request: runs its calls
// (HttpGeneration) and writes either one JSON response or a server-sent-event stream.
//
// Streams: a request that fails before its first token (bad prompt, full queue, no worker)
// still gets its HTTP error status; once streaming has begun, an error ends the stream with a
// `data: {"error": ...}` event before `data: [DONE]`.
//
// Thread safety: one responder per request, on the handler's thread (httplib runs the stream's
// content provider on that thread too).
#pragma once

#include <atomic>

#include <httplib.h>

#include "connection_watch.h"
#include "openai_protocol.h"
#include "tandem/router/router_service.h"

namespace tandem::http {

struct ResponderContext {
  RouterService* service = nullptr;
  std::string model;
  std::chrono::milliseconds request_timeout{600000};
  // Set when the server stops: responses still running cancel their calls and end (a stream
  // with an error event and `data: [DONE]`).
  const std::atomic<bool>* stopping = nullptr;
  // Responses in progress (counted from the request's start to the end of its last write).
  std::atomic<int32_t>* open_responses = nullptr;
};

// Fills `res` (status, body or chunked provider) for `request`.
void Respond(const ResponderContext& ctx, OpenAiRequest request, const httplib::Request& req,
             httplib::Response& res);

// Writes `error` as the response.
void RespondError(httplib::Response& res, const ApiError& error);

}  // namespace tandem::http
