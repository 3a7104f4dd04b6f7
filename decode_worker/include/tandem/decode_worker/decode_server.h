// DecodeServer: a whole decode worker in one object — gRPC server (DecodeWorker service,
// health, reflection), the loaded Engine, the KV Transceiver, the ReservationTable and the
// EngineLoop. Used by tandem-decode's main and by tests (in process, port 0).
//
// Health (grpc.health.v1): service "" (liveness) is SERVING while the process serves;
// "tandem.v1.DecodeWorker" (readiness) is NOT_SERVING while loading and draining. The metrics
// port answers GET /health in step (an HTTP probe for mTLS gRPC ports): 503 {"status":"loading"},
// 200 {"status":"ok"} once ready, 503 {"status":"draining"} from the start of Drain or Shutdown.
//
// Thread safety: Start, Drain and Shutdown from one controlling thread; the accessors from any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/decode_worker/decode_service.h"
#include "tandem/decode_worker/engine_loop.h"
#include "tandem/decode_worker/reservations.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/kv_staging.h"
#include "tandem/kvtransfer/transceiver.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/rpc/worker_registration.h"
#include "tandem/worker/kv_pages.h"

namespace tandem {

inline constexpr char kDecodeServiceName[] = "tandem.v1.DecodeWorker";

struct DecodeServerOptions {
  // Checkpoint folder. Required.
  std::filesystem::path model_dir;
  // gRPC listen address. Default: 127.0.0.1, port 0 (= pick a free one).
  std::string host = "127.0.0.1";
  int port = 0;
  // Host announced to the router (gRPC) and put in tickets (KV), when `host` is not reachable
  // as it is (a wildcard such as 0.0.0.0). Default: "" (host).
  std::string advertise_host;
  // KV transfer listen port on `host`; 0 = pick. Default: 0.
  int kv_port = 0;
  // KV transports offered (ParseKvTransports of --kv-transport): with "shm" the pages that
  // senders write into (the KV cache, or the staging mirror of device pages) live in shared
  // memory and same-host prefill workers copy layers straight into them. Default: auto.
  std::string kv_transport = "auto";
  // The NCCL of the nccl transport (WorkerNccl in tandem/worker/kv_pages.h): "fake" (the CPU
  // loopback), a library path, or "" (libnccl.so.2). Used only with kv_transport "nccl".
  // Default: "".
  std::string nccl_library;
  // Bounds on the KV listener's inbound connections (TransceiverOptions): those not through
  // the handshake yet at most; all at most (0 = derived from the page pool: one per 16 pages,
  // since every transfer needs pages to land in, clamped to [16, 256]); the time a connection
  // has to present a request's token; the silence after which a connection with no transfer
  // is closed. Defaults: 16, 0, 10 s, 5 min.
  int32_t kv_max_pending_connections = 16;
  int32_t kv_max_connections = 0;
  std::chrono::milliseconds kv_handshake_timeout{10000};
  std::chrono::milliseconds kv_idle_timeout{300000};
  // KV cache memory. Default: 256 MiB.
  int64_t kv_cache_bytes = int64_t{256} << 20;
  // Tokens per KV page. Default: 16.
  int32_t page_size = 16;
  // Compute threads; 0 = every core. Default: 0.
  int32_t threads = 0;
  // Prefix cache (ReservationTable): keeps the full pages of finished requests (the prompt's;
  // on the CPU backend the generated tokens' too) and reserves a later prompt's cached prefix
  // from them, so the prefill worker does not ship those pages again. Default: true (as the
  // prefill worker's).
  bool prefix_cache = true;
  // Weight storage (see EngineOptions::weights). Default: the backend's default.
  std::optional<DType> weights;
  // Backend: device, CUDA ordinal, deterministic kernels (EngineOptions' fields of the same
  // names; the rest of `backend` is ignored). Default: CPU.
  EngineOptions backend;
  // Name in logs and registrations. Default: "decode-0".
  std::string worker_id = "decode-0";
  // Lease of a reservation whose Reserve asks for none. Default: 10 s.
  std::chrono::milliseconds default_lease{10000};
  // Batch limits of the decode loop. Default: GeneratorOptions defaults.
  GeneratorOptions generator;
  // Reservation bookkeeping (max_context and default_lease are filled in by Start).
  ReservationTableOptions reservations;
  // Prometheus /metrics (and /health) port on `host`: 0 = pick, -1 = none. Default: -1.
  int metrics_port = -1;
  // The metrics port over HTTPS (--metrics-tls). Default: none, plain HTTP.
  MetricsTls metrics_tls;
  // Routers to register with and heartbeat to: "host:port", or several router replicas as
  // "host:port,host:port,..." (ParseRouterList; each one gets every registration, heartbeat and
  // cache report on its own). "" = none (static list only).
  std::string router;
  // The cluster key (tandem/rpc/cluster_auth.h): required of Reserve, Decode and Release
  // calls, sent with the Registry calls. Default: none.
  std::string cluster_key;
  // gRPC keepalive pings and idle-connection bound (tandem/rpc/grpc_keepalive.h).
  GrpcKeepalive grpc_keepalive;
  // TLS (tandem/rpc/tls_credentials.h): with a certificate the gRPC port serves TLS, and with a
  // CA too it requires client certificates the CA signed (mTLS); with a CA the Registry calls to
  // the router use TLS. The KV listener's TCP connections (tcp, and nccl's control connection)
  // follow the gRPC port: TLS only with a certificate, mTLS with a CA too (kvtransfer/kv_tls.h).
  // Default: none, plaintext.
  TlsConfig tls;
};

struct PageUsage {
  int32_t used = 0;
  int32_t total = 0;
};

class DecodeServer {
 public:
  // Starts gRPC (readiness NOT_SERVING), loads the model, starts the transceiver and the
  // engine loop, then reports SERVING. UNAVAILABLE when a port cannot be bound; the engine's
  // load errors as they are.
  static StatusOr<std::unique_ptr<DecodeServer>> Start(const DecodeServerOptions& options);
  // Shutdown() with no grace.
  ~DecodeServer();

  // "host:port" of the gRPC server.
  const std::string& address() const { return address_; }
  int port() const { return port_; }
  // "host:port" of the KV transceiver.
  const std::string& kv_endpoint() const { return transceiver_->endpoint(); }
  const KvPageLayout& layout() const { return backend_.layout; }
  PageUsage pages() const;
  // Pages, requests in the batch and reservations still waiting for their KV.
  WorkerLoad Load() const;
  // "http://host:port/metrics", or "" when options.metrics_port is -1.
  std::string metrics_url() const { return metrics_->url(); }
  Metrics& metrics() { return *metrics_; }
  // With options.router: blocks until a router (any one of the list) accepted the registration
  // (else OK at once).
  Status WaitRegistered(std::chrono::milliseconds timeout);
  Engine& engine() { return *engine_; }
  ReservationTable& reservations() { return *table_; }
  Transceiver& transceiver() { return *transceiver_; }
  DecodeService& service() { return service_; }

  // SIGTERM path: readiness NOT_SERVING, new Reserve calls get UNAVAILABLE, running streams
  // and live reservations may finish until `grace` ends; streams still running then end with
  // UNAVAILABLE saying the worker was draining (their ids logged, their pages freed); then
  // Shutdown(). Bounded by `grace` plus a few seconds.
  void Drain(std::chrono::milliseconds grace);
  // Stops the gRPC server (in-flight calls cancelled after `grace`), the engine loop, the
  // reservations and the transceiver; every page goes back. Idempotent.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(0));

 private:
  DecodeServer() = default;

  DecodeService service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
  int port_ = 0;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<KvStaging> staging_;  // device pages only: the mirror pages_ exposes
  std::unique_ptr<KvCachePages> pages_;
  std::unique_ptr<DeviceIpc> device_ipc_;       // cuda_ipc only; outlives the transceiver
  std::unique_ptr<KvCachePages> device_pages_;  // cuda_ipc only: the engine's device pages
  std::unique_ptr<Transceiver> transceiver_;
  std::unique_ptr<ReservationTable> table_;
  std::unique_ptr<EngineLoop> loop_;
  DecodeBackend backend_;
  std::unique_ptr<WorkerRegistration> registration_;
  bool shut_down_ = false;
  // What GET /health on the metrics port says: "loading", "ok", "draining". Static strings.
  std::atomic<const char*> health_{"loading"};
  mutable std::mutex components_mu_;  // scrape reads vs the resets in Shutdown
  // Last: destroyed first, so no scrape reads a component being destroyed.
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace tandem
