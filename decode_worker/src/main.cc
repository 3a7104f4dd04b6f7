// tandem-decode: one decode worker process. Prints "decode grpc HOST:PORT" on stdout once it
// serves; logs go to stderr. SIGTERM / SIGINT drain it (bounded), then it exits.
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "tandem/common/logging.h"
#include "tandem/common/secret.h"
#include "tandem/decode_worker/decode_server.h"
#include "tandem/engine/weights_flag.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/server_main.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/rpc/worker_registration.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem-decode: decode worker (reserves KV pages, receives KV, decodes)"};
  tandem::DecodeServerOptions opts;
  std::string model;
  int64_t kv_cache_mb = 256;
  int64_t lease_ms = 10000;
  int64_t drain_ms = 30000;
  std::string log_level = "info";
  app.add_option("--model", model, "Checkpoint folder or .gguf file")->required();
  app.add_option("--host", opts.host, "Address to serve gRPC and KV transfer on")
      ->capture_default_str();
  app.add_option("--port", opts.port, "gRPC port (0 = pick)")->capture_default_str();
  app.add_option("--kv-port", opts.kv_port, "KV transfer port (0 = pick)")->capture_default_str();
  app.add_option("--kv-transport", opts.kv_transport,
                 "KV transports offered: auto (shm and tcp, and cuda_ipc with --device cuda), "
                 "tcp, shm (same-host senders write into this worker's shared-memory KV pages), "
                 "cuda_ipc (same-host CUDA senders copy into its device KV pages), or nccl (see "
                 "--nccl-library)")
      ->check(CLI::IsMember({"auto", "tcp", "shm", "cuda_ipc", "nccl"}))
      ->capture_default_str();
  app.add_option(
      "--nccl-library", opts.nccl_library,
      "NCCL for --kv-transport nccl: a path to libnccl, \"\" (libnccl.so.2), or "
      "\"fake\" (a loopback over Unix sockets that runs the nccl data plane on CPU hosts)");
  app.add_option("--kv-max-pending-connections", opts.kv_max_pending_connections,
                 "KV connections not through the handshake (a request's token) at most; one "
                 "more is closed at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--kv-max-connections", opts.kv_max_connections,
                 "KV connections at most (0 = one per 16 KV pages, clamped to [16, 256])")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 16));
  int64_t kv_handshake_ms = opts.kv_handshake_timeout.count();
  app.add_option("--kv-handshake-timeout-ms", kv_handshake_ms,
                 "A KV connection that presents no request's token by then is closed")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  int64_t kv_idle_ms = opts.kv_idle_timeout.count();
  app.add_option("--kv-idle-timeout-ms", kv_idle_ms,
                 "A KV connection with no transfer that sent nothing this long is closed")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{86400000}));
  app.add_option("--kv-cache-mb", kv_cache_mb, "KV cache memory in MiB")->capture_default_str();
  app.add_option("--threads", opts.threads, "Compute threads (0 = every core)")
      ->capture_default_str();
  std::string weights = "auto";
  tandem::AddWeightsFlag(app, &weights);
  tandem::DeviceFlags device;
  tandem::AddDeviceFlags(app, &device);
  opts.worker_id = tandem::DefaultWorkerId("decode");
  app.add_option("--worker-id", opts.worker_id, "Worker name, unique among the router's workers")
      ->capture_default_str();
  app.add_option(
      "--advertise-host", opts.advertise_host,
      "Host announced to the router and put in KV tickets, when --host is a wildcard (0.0.0.0) or "
      "not reachable from the router and prefill workers");
  app.add_option("--prefix-cache", opts.prefix_cache,
                 "Keep the KV of finished requests' full pages (prompt, and on CPU the generated "
                 "tokens) and take them for later prompts with the same prefix: those pages are "
                 "not shipped again (LRU when pages run out)")
      ->capture_default_str();
  std::string kv_reserve = "prompt";
  app.add_option("--kv-reserve", kv_reserve,
                 "KV pages a reservation takes: prompt (the generated tokens' pages come as they "
                 "do; the youngest requests are preempted when pages run out) or full (prompt + "
                 "max_tokens up front: no preemption, fewer requests at once)")
      ->check(CLI::IsMember({"prompt", "full"}))
      ->capture_default_str();
  app.add_option("--lease-ms", lease_ms, "Default reservation lease in milliseconds")
      ->capture_default_str();
  opts.metrics_port = 0;
  app.add_option("--metrics-port", opts.metrics_port,
                 "Prometheus /metrics port (0 = pick, -1 = off)")
      ->capture_default_str();
  app.add_option("--router", opts.router,
                 "Router HOST:PORT to register with and heartbeat to (optional); several router "
                 "replicas as HOST:PORT,HOST:PORT,...: the worker registers with, heartbeats "
                 "and reports its cache to each one on its own (one that is down delays none "
                 "of the others), starts serving once any one accepted it, and its drain "
                 "reaches them all");
  tandem::AddDrainFlag(app, &drain_ms);
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();
  std::string cluster_key_file;
  tandem::AddClusterKeyFlag(app, &cluster_key_file);
  tandem::AddGrpcKeepaliveFlags(app, &opts.grpc_keepalive);
  tandem::TlsFiles tls_files;
  tandem::AddTlsFlags(app, &tls_files);
  bool metrics_tls = false;
  tandem::AddMetricsTlsFlag(app, &metrics_tls);
  CLI11_PARSE(app, argc, argv);
  if (auto tls = tandem::LoadTls(tls_files); tls.ok()) {
    opts.tls = *std::move(tls);
  } else {
    std::fprintf(stderr, "error: %s\n", tls.status().message().c_str());
    return 1;
  }
  if (auto mt = tandem::MetricsTlsFromFlags(opts.tls, metrics_tls); mt.ok()) {
    opts.metrics_tls = *std::move(mt);
  } else {
    std::fprintf(stderr, "error: %s\n", mt.status().message().c_str());
    return 1;
  }
  if (auto key = tandem::LoadClusterKey(cluster_key_file); key.ok()) {
    opts.cluster_key = *std::move(key);
  } else {
    std::fprintf(stderr, "error: %s\n", key.status().message().c_str());
    return 1;
  }
  tandem::SetLogLevel(log_level);
  opts.kv_handshake_timeout = std::chrono::milliseconds(kv_handshake_ms);
  opts.kv_idle_timeout = std::chrono::milliseconds(kv_idle_ms);
  opts.model_dir = model;
  opts.kv_cache_bytes = kv_cache_mb << 20;
  opts.weights = tandem::WeightsFromFlag(weights);
  tandem::ApplyDeviceFlags(device, &opts.backend);
  opts.default_lease = std::chrono::milliseconds(lease_ms);
  opts.reservations.reserve_max_tokens = kv_reserve == "full";

  std::unique_ptr<tandem::DecodeServer> server;
  auto start = [&]() -> tandem::Status {
    TANDEM_ASSIGN_OR_RETURN(server, tandem::DecodeServer::Start(opts));
    if (!server->metrics_url().empty()) {
      std::printf("decode metrics %s\n", server->metrics_url().c_str());
    }
    if (tandem::Status st = server->WaitRegistered(std::chrono::seconds(30)); !st.ok()) {
      TLOG_WARN("tandem-decode: {}; serving anyway, registration goes on", st.ToString());
    }
    std::printf("decode grpc %s\n", server->address().c_str());
    std::fflush(stdout);
    return tandem::Status::Ok();
  };
  auto drain = [&](std::chrono::milliseconds budget) {
    server->Drain(budget);
    server.reset();
  };
  return tandem::RunServerUntilSignal("tandem-decode", std::chrono::milliseconds(drain_ms), start,
                                      drain);
}
