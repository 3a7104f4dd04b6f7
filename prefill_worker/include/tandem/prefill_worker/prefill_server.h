// PrefillServer: one prefill worker process minus its flags — gRPC server (PrefillWorker
// service, grpc.health.v1, reflection), the Engine, a sender-only Transceiver and the Scheduler.
//
// Lifecycle: Start() binds and starts serving with health NOT_SERVING for the readiness service
// ("tandem.v1.PrefillWorker"; liveness "" is SERVING), loads the model, then turns readiness
// SERVING. Shutdown() drains: readiness NOT_SERVING, new calls UNAVAILABLE, in-flight requests
// finish within `drain_timeout`; what remains is cancelled; then the server stops. The metrics
// port answers GET /health in step: 503 {"status":"loading"}, 200 {"status":"ok"} once ready,
// 503 {"status":"draining"} from the start of Shutdown (an HTTP probe for mTLS gRPC ports).
//
// Thread safety: all const methods may be called from any thread; Shutdown once (idempotent).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/engine/engine.h"
#include "tandem/kvtransfer/transceiver.h"
#include "tandem/prefill_worker/prefill_service.h"
#include "tandem/prefill_worker/scheduler.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/rpc/worker_registration.h"

namespace tandem {

struct PrefillServerOptions {
  // Checkpoint folder. Required.
  std::filesystem::path model_dir;
  // gRPC listen address. Default: 127.0.0.1, port 0 (picks a free port; see port()).
  std::string host = "127.0.0.1";
  int port = 0;
  // Host announced to the router, when `host` is not reachable as it is (a wildcard such as
  // 0.0.0.0). Default: "" (host).
  std::string advertise_host;
  // KV cache size, threads, page size of the engine.
  EngineOptions engine;
  // Token budget, queue bound, completion threads.
  SchedulerOptions scheduler;
  // Name in logs. Default: "prefill-0".
  std::string worker_id = "prefill-0";
  // Upper bound of one request when the client set no shorter deadline. Default: 60 s.
  std::chrono::milliseconds max_request_time{60000};
  // Longest wait for a KV connection to the decode worker. Default: 2 s.
  std::chrono::milliseconds connect_timeout{2000};
  // Prometheus /metrics (and /health) port on `host`: 0 = pick, -1 = none. Default: -1.
  int metrics_port = -1;
  // The metrics port over HTTPS (--metrics-tls). Default: none, plain HTTP.
  MetricsTls metrics_tls;
  // Routers to register with and heartbeat to: "host:port", or several router replicas as
  // "host:port,host:port,..." (ParseRouterList; each one gets every registration, heartbeat and
  // cache report on its own). "" = none (static list only).
  std::string router;
  // KV transports announced to the router (ParseKvTransports of --kv-transport): the sender
  // side of tcp and of shm (same host: copies layers into the decode worker's shared pages).
  // Default: auto.
  std::string kv_transport = "auto";
  // The NCCL of the nccl transport (WorkerNccl in tandem/worker/kv_pages.h): "fake" (the CPU
  // loopback), a library path, or "" (libnccl.so.2). Used only with kv_transport "nccl".
  // Default: "".
  std::string nccl_library;
  // The cluster key (tandem/rpc/cluster_auth.h): required of Prefill calls, sent with the
  // Registry calls. Default: none.
  std::string cluster_key;
  // gRPC keepalive pings and idle-connection bound (tandem/rpc/grpc_keepalive.h).
  GrpcKeepalive grpc_keepalive;
  // TLS (tandem/rpc/tls_credentials.h): with a certificate the gRPC port serves TLS, and with a
  // CA too it requires client certificates the CA signed (mTLS); with a CA the Registry calls to
  // the router use TLS, and so do the KV connections to decode workers (verified against the
  // CA, presenting the certificate when one is given; kvtransfer/kv_tls.h). Default: none,
  // plaintext.
  TlsConfig tls;
};

class PrefillServer {
 public:
  // The readiness service name in grpc.health.v1.
  static constexpr const char* kHealthService = "tandem.v1.PrefillWorker";

  // Starts serving; returns once the model is loaded and readiness is SERVING.
  // UNAVAILABLE when the address cannot be bound; the engine's error when loading fails.
  static StatusOr<std::unique_ptr<PrefillServer>> Start(const PrefillServerOptions& options);
  ~PrefillServer();

  // "host:port" the gRPC server listens on.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  const KvPageLayout& layout() const { return layout_; }
  Engine& engine() { return *engine_; }
  // "http://host:port/metrics", or "" when options.metrics_port is -1.
  std::string metrics_url() const { return metrics_->url(); }
  Metrics& metrics() { return *metrics_; }

  // KV pages (blocks) of this worker held by requests (idle prefix-cache pages excluded) / in
  // total.
  int32_t kv_pages_used() const;
  int32_t kv_pages_total() const;
  SchedulerStats stats() const;
  // KV bytes copied device → host for the TCP transport since the last call (for
  // tandem_kv_staged_bytes_total; 0 with host pages).
  int64_t TakeStagedBytes();

  // With options.router: blocks until a router (any one of the list) accepted the registration
  // (else OK at once).
  Status WaitRegistered(std::chrono::milliseconds timeout);

  // Drains (see above), then stops everything. Idempotent.
  void Shutdown(std::chrono::milliseconds drain_timeout);

 private:
  PrefillServer() = default;

  std::string address_;
  int port_ = 0;
  KvPageLayout layout_;
  std::unique_ptr<PrefillService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<DeviceIpc> device_ipc_;   // cuda_ipc only; outlives the transceiver
  std::vector<std::string> kv_transports_;  // what this worker can send over (registered)
  std::unique_ptr<Transceiver> transceiver_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<WorkerRegistration> registration_;
  std::mutex shutdown_mu_;
  mutable std::mutex components_mu_;  // scheduler_ reads (stats) vs its reset in Shutdown
  bool shut_down_ = false;
  std::string worker_id_;
  // What GET /health on the metrics port says: "loading", "ok", "draining". Static strings.
  std::atomic<const char*> health_{"loading"};
  // Last: destroyed first, so no scrape reads a component being destroyed.
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace tandem
