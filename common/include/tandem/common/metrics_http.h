// GET /metrics over cpp-httplib for any text exposition: the workers' and router's Metrics and
// the planner's own; and GET /health when given a health callback (the workers: an HTTP probe
// for clusters whose gRPC ports speak mTLS, which Kubernetes' gRPC probes cannot).
// (prometheus-cpp's exposer runs civetweb, which Debian builds with 100 KiB thread stacks; with
// libquadmath loaded — OpenBLAS brings it — glibc formats through printf_positional and overflows
// them.)
//
// Thread safety: `render` and `health` are called from the server's threads; the object is
// immutable once started. The destructor stops the server and joins its thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "tandem/common/status.h"

namespace tandem {

// The metrics port over HTTPS (--metrics-tls): PEM files of the certificate (chain) and its
// private key. Both empty: plain HTTP.
struct MetricsTls {
  std::string cert_file;
  std::string key_file;

  bool enabled() const { return !cert_file.empty() || !key_file.empty(); }
};

class MetricsHttpServer {
 public:
  // GET /health: health() is "ok" → 200 {"status":"ok"}; anything else → 503 {"status":
  // "<it>"}, a word naming the reason ("loading", "draining"). Null: no /health (404).
  using HealthFn = std::function<std::string()>;

  // Serves render() as /metrics (and health() as /health) on host:port (port 0 = pick a free
  // one), over HTTPS with `tls`; returns once the server runs. UNAVAILABLE naming the address
  // when it cannot bind; INVALID_ARGUMENT naming the files when `tls` cannot be loaded.
  static StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& host, int port,
                                                            std::function<std::string()> render,
                                                            HealthFn health = nullptr,
                                                            const MetricsTls& tls = {});
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // "http://host:port/metrics" ("https://" with TLS).
  const std::string& url() const { return url_; }

 private:
  struct Impl;
  explicit MetricsHttpServer(std::unique_ptr<Impl> impl, std::string url);
  std::unique_ptr<Impl> impl_;
  std::string url_;
};

}  // namespace tandem
