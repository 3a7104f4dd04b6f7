// HttpServer: cpp-httplib's routing and handlers behind an epoll front end that bounds
// connections, so that idle or slow clients hold no thread and cannot starve GET /health.
//
// One reactor thread accepts and reads request headers and bodies without blocking. Only a
// connection whose request is complete goes to a worker thread, which runs it through
// cpp-httplib (handler, response, streaming included) and hands the connection back to
// the reactor to wait for the next request (keep-alive). Between requests a connection costs
// a descriptor and its buffered bytes, no thread.
//
//   - At most `max_connections` open at once: one more is answered 503 (OpenAI-shaped JSON
//     error naming the limit) and closed. With `max_connections_per_address`, likewise one
//     more from a client address (IP) that has that many open (reason over_address_limit).
//   - A connection that has not sent complete headers within `header_timeout` of its accept,
//     or of the end of its previous response, is answered 408 and closed (silently when it is
//     an idle keep-alive connection that sent nothing).
//   - Headers over `max_header_bytes`: 431, closed.
//   - The reactor reads the request body too before a worker runs the request, so a slow body
//     holds no thread: a Content-Length body, or a chunked one up to its last chunk and
//     the empty line after it (body_framing.h), up to `max_body_bytes`; a client that sent
//     "Expect: 100-continue" gets 100 Continue from the reactor first. A body not complete
//     within `body_timeout` of the end of its headers is answered 408 and closed (reason
//     body_timeout). A Content-Length over `max_body_bytes` is answered 413 by the reactor
//     (OpenAI-shaped JSON naming the bound and --max-body-bytes, Connection: close) and closed
//     (reason body_too_large), the body never read, so a slow over-limit body holds no thread.
//     A larger chunked body, an invalid or unframed one, or one whose client ended its side
//     goes to a worker at once, and cpp-httplib and the handlers answer it as before (413, 400)
//     or read it; so does any body that `waits_for_body` says a handler answers unread, and one
//     that would take the bodies held over `max_buffered_body_bytes`.
//   - With a certificate (tls_cert_file / tls_key_file) the port speaks HTTPS only: the
//     reactor runs each connection's TLS handshake without blocking, and the handshake counts
//     against the header timeout (a client that stalls it is closed); workers read and write
//     through the connection's SSL object. A plaintext request is answered 400 in plaintext
//     and closed; over the connection limit a TLS client is closed without an answer.
//   - Worker threads start on demand up to `max_threads` and end after `thread_idle` without
//     work; GET/HEAD of `probe_paths` (/health, /metrics) run on their own `probe_threads`, so
//     saturated generation cannot block them.
//
// Metrics (when given): tandem_http_connections (open now) and
// tandem_http_connections_closed_total{reason}: over_limit, over_address_limit, header_timeout,
// body_timeout, body_too_large, idle, headers_too_large, client_closed, no_thread, served,
// shutdown, error
// (with HTTPS also plaintext_on_tls and tls_handshake: a failed handshake).
//
// Thread safety: configure routes before Start; Start once; Stop from any thread (not from a
// handler), once or more.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <httplib.h>
#include <openssl/ssl.h>

#include "body_framing.h"
#include "elastic_thread_pool.h"
#include "tandem/common/metrics.h"
#include "tandem/common/status.h"

namespace tandem::http {

struct HttpServerOptions {
  // Address and port (0 = pick a free one).
  std::string host = "127.0.0.1";
  int32_t port = 0;
  // Connections open at once (idle, reading headers or being served). Default: 1024.
  int32_t max_connections = 1024;
  // Connections open at once from one client address (IP); one more is answered 503 naming the
  // address and closed. 0 = no per-address cap (behind a proxy or a load balancer every client
  // shares its address). Default: 0.
  int32_t max_connections_per_address = 0;
  // Time to send complete request headers. Default: 10 s.
  std::chrono::milliseconds header_timeout{10000};
  // Request headers' size at most. Default: 64 KiB.
  size_t max_header_bytes = 64 * 1024;
  // Time to send the whole request body once the headers are complete; 408 then. Default: 30 s.
  std::chrono::milliseconds body_timeout{30000};
  // Bodies the reactor waits for (and buffers) at most: a larger Content-Length is answered
  // 413 by the reactor, unread; chunk data past it goes to a worker at once, whose handler
  // refuses it (413) or reads it. Set it to the handlers' own bound (HttpFrontend:
  // RequestLimits::max_body_bytes, --max-body-bytes, named in the 413). Default: 16 MiB.
  uint64_t max_body_bytes = uint64_t{16} << 20;
  // Whether the reactor may wait for a request's body: false where a handler answers without
  // reading it (HttpFrontend's pre-routing handler; waiting would hold such an answer until
  // the body came). Empty: every framed body. Runs on the reactor thread: keep it cheap.
  std::function<bool(const RequestHead&)> waits_for_body;
  // Body bytes the reactor holds at once over all connections waiting for their bodies; past
  // it such a connection goes to a worker, which reads the rest of its body (holding a thread,
  // as before this bound existed). Bounds memory: max_connections x max_body_bytes could be
  // gigabytes. Default: 256 MiB.
  uint64_t max_buffered_body_bytes = uint64_t{256} << 20;
  // Threads serving requests at most (a streaming response holds one). Default: 256.
  int32_t max_threads = 256;
  // Threads serving probe_paths. Default: 2.
  int32_t probe_threads = 2;
  // GET/HEAD paths served by the probe threads. Default: /health, /metrics.
  std::vector<std::string> probe_paths = {"/health", "/metrics"};
  // A worker thread without work this long ends. Default: 10 s.
  std::chrono::milliseconds thread_idle{10000};
  // Wait for a request body's next bytes on a worker (a body the reactor does not wait for:
  // over max_body_bytes, unframed) / for the client to take response bytes. Default: 30 s.
  std::chrono::milliseconds read_timeout{30000};
  std::chrono::milliseconds write_timeout{30000};
  // Requests one connection may carry. Default: 1000.
  int32_t max_requests_per_connection = 1000;
  // PEM certificate chain and private key: HTTPS. Default: none, plain HTTP.
  std::string tls_cert_file;
  std::string tls_key_file;
};

class HttpServer : public httplib::Server {
 public:
  // `metrics` may be null; it must outlive the server.
  HttpServer(HttpServerOptions options, Metrics* metrics);
  ~HttpServer() override;

  // Binds and starts the reactor. UNAVAILABLE naming the address when it cannot bind;
  // INVALID_ARGUMENT naming the file when the certificate or key cannot be loaded.
  Status Start();
  // The port bound (after Start).
  int port() const { return port_; }
  // Stops accepting, closes the connections waiting for a request, and waits for the requests
  // being served to end (streaming responses see the server stopping and end). Idempotent.
  void Stop();

  // Connections open now; worker threads alive now (probe threads included).
  int32_t open_connections() const { return open_.load(); }
  int32_t threads() const;

 private:
  struct Conn;
  class Reactor;

  Status InitTls();
  void Serve(std::unique_ptr<Conn> conn);
  void Close(std::unique_ptr<Conn> conn, const char* reason);
  void CountClosed(const char* reason);
  // One more connection from `address`; false (nothing taken) at the per-address cap.
  bool TakeAddressSlot(const std::string& address, int32_t* open_from_it);
  void GiveAddressSlot(const std::string& address);

  const HttpServerOptions options_;
  Metrics* const metrics_;
  int port_ = 0;
  std::atomic<int32_t> open_{0};
  std::mutex address_mu_;                                 // guards per_address_
  std::unordered_map<std::string, int32_t> per_address_;  // open connections per client address
  std::atomic<bool> stopping_{false};
  std::mutex stop_mu_;  // one Stop at a time
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ssl_ctx_{nullptr, &SSL_CTX_free};
  std::unique_ptr<Reactor> reactor_;
  std::thread reactor_thread_;
  ElasticThreadPool pool_;
  ElasticThreadPool probe_pool_;
};

}  // namespace tandem::http
