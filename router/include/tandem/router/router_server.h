// A running router: the Tandem service, the Registry service workers join through, gRPC health
// (grpc.health.v1), server reflection, the OpenAI-compatible HTTP API (when an HTTP port is
// given) and Prometheus /metrics (when a metrics port is given).
//
// Health: "" (liveness) is SERVING once the port is open; "tandem.v1.Tandem" (readiness) is
// NOT_SERVING while the tokenizer and config load and again while draining. GET /health on the
// metrics port says the same over HTTP(S) (200 "ok"; 503 "loading" / "draining"), for probes
// that cannot speak gRPC to a TLS port; the HTTP API's /health also wants workers in rotation.
//
// Thread safety: Drain and the accessors may be called from any thread, Drain at most once.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/server.h>

#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/router/registry_service.h"
#include "tandem/router/router_service.h"

namespace tandem {
namespace http {
class HttpFrontend;
}

class RouterServer {
 public:
  // Binds options.host:options.port, then loads the model's tokenizer and config and marks
  // itself ready. Errors: UNAVAILABLE when the port cannot be bound, the loader's errors.
  static StatusOr<std::unique_ptr<RouterServer>> Start(const RouterOptions& options);
  ~RouterServer();

  // "host:port" actually bound.
  const std::string& address() const { return address_; }
  // "host:port" of the OpenAI-compatible HTTP API, or "" when options.http_port is -1.
  const std::string& http_address() const { return http_address_; }
  // "http://host:port/metrics", or "" when options.metrics_port is -1.
  std::string metrics_url() const { return metrics_->url(); }
  Metrics& metrics() { return *metrics_; }

  // NOT_SERVING, refuses new Generate calls (gRPC and HTTP) with UNAVAILABLE, waits (at most
  // `timeout`) for the ones in flight, then ends those still running properly (gRPC:
  // UNAVAILABLE saying the router was draining; HTTP streams: an error event, then
  // `data: [DONE]`; whole HTTP responses: 503), logs their ids and shuts both servers down.
  void Drain(std::chrono::milliseconds timeout);

 private:
  RouterServer() = default;
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<RegistryService> registry_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<http::HttpFrontend> http_;  // stopped before the service goes away
  std::string address_;
  std::string http_address_;
  // Last: destroyed first, so no scrape runs while the backend goes away.
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace tandem
