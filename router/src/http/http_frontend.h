// HttpFrontend: the router's OpenAI-compatible HTTP API (cpp-httplib), in the router process
// beside its gRPC server and driving the same GenerateCall, on its own port.
//
//   POST /v1/completions, POST /v1/chat/completions   (JSON, or server-sent events with
//                                                       "stream": true, ending "data: [DONE]")
//   GET  /v1/models, /v1/models/{model}
//   GET  /health    200 when ready (model loaded, a prefill and a decode worker in rotation,
//                   not draining), else 503
//   GET  /metrics   the router's Prometheus exposition
//
// Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}} with 400 (bad
// input, named in "param"), 401 (API key), 404 (unknown model or path), 413 (body over
// limits.max_body_bytes), 415 (a Content-Encoding other than gzip, deflate or br, or a multipart
// body), 429 (queue or pages full), 503 (no worker, draining), 504 (deadline).
//
// Request bodies are read by the handler itself, after the API key check (the HTTP reactor has
// buffered a Content-Length or chunked body up to the bound before, without a thread, within
// body_timeout: http_server.h), and bounded by limits.max_body_bytes as decoded bytes whatever
// the framing: Content-Length (refused before
// reading when over the bound), chunked, or until the client closes; gzip / deflate / br bodies
// are inflated only up to the bound (cpp-httplib's own limit covers Content-Length only). An
// over-long body is read past up to 4x the bound, so that the connection stays in step; the rest
// of a longer one is left unread. Other routes take no body: a chunked, unframed or compressed
// one is answered 404 before it is read (cpp-httplib would read it into memory before routing).
//
// Connections are bounded (HttpServer, http_server.h): idle, slow-header and slow-body
// connections hold no thread; over max_connections a new one is answered 503, headers not
// complete within header_timeout 408, a body not complete within body_timeout 408; /health and
// /metrics run on their own two threads.
//
// With API keys configured, /v1/* requires "Authorization: Bearer <key>"; /health and /metrics
// stay open for probes and scrapers.
//
// A client that disconnects (mid-stream, or while a non-streaming answer is computed) cancels
// its calls, which frees their pages on the workers.
//
// Thread safety: Start once; Stop from any thread, once.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/router/request_limits.h"
#include "tandem/router/router_service.h"

namespace tandem::http {

class HttpServer;

struct HttpOptions {
  // Address and port (0 = pick a free one).
  std::string host = "127.0.0.1";
  int32_t port = 0;
  // Requests served at once (each streaming response holds a thread); threads start on demand
  // and end when idle. Default: 256.
  int32_t threads = 256;
  // Connections open at once; one more is answered 503 and closed. Default: 1024.
  int32_t max_connections = 1024;
  // Connections from one client address at most; 0 = no such cap. Default: 0.
  int32_t max_connections_per_address = 0;
  // Time to send complete request headers (from the accept, or the end of the previous
  // response); 408 then. Default: 10 s.
  std::chrono::milliseconds header_timeout{10000};
  // Time to send the whole request body once the headers are complete (read without a
  // thread, up to limits.max_body_bytes); 408 then. Default: 30 s.
  std::chrono::milliseconds body_timeout{30000};
  // Accepted bearer tokens; empty = no authentication.
  std::vector<std::string> api_keys;
  // Chat's max_tokens when the request gives none: as many as fit, at most this; 0 = no cap.
  // Default: 0.
  int32_t chat_max_tokens = 0;
  // Bounds on one request (body bytes, prompts × n, stop strings, prompt bytes).
  RequestLimits limits;
  // Deadline of one request. Default: 10 min.
  std::chrono::milliseconds request_timeout{600000};
  // PEM certificate chain and key files: HTTPS only. Default: none, plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
};

class HttpFrontend {
 public:
  // `service` and `metrics` must outlive the frontend. UNAVAILABLE when it cannot bind.
  static StatusOr<std::unique_ptr<HttpFrontend>> Start(const HttpOptions& options,
                                                       RouterService* service, Metrics* metrics);
  ~HttpFrontend();

  // "host:port" actually bound.
  const std::string& address() const { return address_; }
  // Waits (at most `grace`) for the responses in progress to end by themselves (a drain has
  // ended their calls: each writes its last event), then stops accepting and closes the
  // listener; a stream still running then ends with an error event and `data: [DONE]`.
  // Idempotent.
  void Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

 private:
  class Handlers;
  HttpFrontend() = default;

  std::unique_ptr<Handlers> handlers_;
  std::unique_ptr<HttpServer> server_;
  std::string address_;
};

}  // namespace tandem::http
