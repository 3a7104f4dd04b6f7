// tandem-prefill: one prefill worker process. Prints "prefill grpc HOST:PORT" on stdout once
// serving; logs go to stderr. SIGTERM / SIGINT drain and exit.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>

#include <CLI/CLI.hpp>

#include "tandem/common/logging.h"
#include "tandem/common/secret.h"
#include "tandem/engine/weights_flag.h"
#include "tandem/prefill_worker/prefill_server.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/server_main.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/rpc/worker_registration.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem-prefill: prefill worker (computes prompt KV, ships it to decode workers)"};
  tandem::PrefillServerOptions options;
  std::string model;
  int64_t kv_cache_mb = 256;
  int64_t drain_ms = 30000;
  std::string log_level = "info";
  app.add_option("--model", model, "Checkpoint folder or .gguf file")->required();
  app.add_option("--host", options.host, "gRPC listen host")->capture_default_str();
  app.add_option("--port", options.port, "gRPC port (0 = pick a free one)")->capture_default_str();
  app.add_option("--kv-cache-mb", kv_cache_mb, "KV cache size in MiB")->capture_default_str();
  app.add_option("--threads", options.engine.num_threads, "Compute threads (0 = all cores)")
      ->capture_default_str();
  std::string weights = "auto";
  tandem::AddWeightsFlag(app, &weights);
  tandem::DeviceFlags device;
  tandem::AddDeviceFlags(app, &device);
  app.add_option("--max-batch-tokens", options.scheduler.max_batch_tokens,
                 "Prompt tokens per forward")
      ->capture_default_str();
  app.add_option("--max-queue", options.scheduler.max_queue, "Requests waiting at most")
      ->capture_default_str();
  app.add_option("--prefix-cache", options.engine.prefix_cache,
                 "Reuse the KV of cached prompt prefixes (full pages), evicted LRU when pages "
                 "run out")
      ->capture_default_str();
  options.worker_id = tandem::DefaultWorkerId("prefill");
  app.add_option("--worker-id", options.worker_id, "Worker name, unique among the router's workers")
      ->capture_default_str();
  app.add_option("--advertise-host", options.advertise_host,
                 "Host announced to the router, when --host is a wildcard (0.0.0.0) or "
                 "not reachable from the router");
  options.metrics_port = 0;
  app.add_option("--metrics-port", options.metrics_port,
                 "Prometheus /metrics port (0 = pick, -1 = off)")
      ->capture_default_str();
  app.add_option("--router", options.router,
                 "Router HOST:PORT to register with and heartbeat to (optional); several router "
                 "replicas as HOST:PORT,HOST:PORT,...: the worker registers with, heartbeats "
                 "and reports its cache to each one on its own (one that is down delays none "
                 "of the others), starts serving once any one accepted it, and its drain "
                 "reaches them all");
  app.add_option("--kv-transport", options.kv_transport,
                 "KV transports announced to the router: auto (shm and tcp, and cuda_ipc with "
                 "--device cuda), tcp, shm, cuda_ipc or nccl (see --nccl-library)")
      ->check(CLI::IsMember({"auto", "tcp", "shm", "cuda_ipc", "nccl"}))
      ->capture_default_str();
  app.add_option(
      "--nccl-library", options.nccl_library,
      "NCCL for --kv-transport nccl: a path to libnccl, \"\" (libnccl.so.2), or "
      "\"fake\" (a loopback over Unix sockets that runs the nccl data plane on CPU hosts)");
  int64_t max_request_ms = options.max_request_time.count();
  app.add_option("--max-request-ms", max_request_ms,
                 "Longest a request may take here, queueing included, when its caller's deadline "
                 "is later")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  tandem::AddDrainFlag(app, &drain_ms);
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();
  std::string cluster_key_file;
  tandem::AddClusterKeyFlag(app, &cluster_key_file);
  tandem::AddGrpcKeepaliveFlags(app, &options.grpc_keepalive);
  tandem::TlsFiles tls_files;
  tandem::AddTlsFlags(app, &tls_files);
  bool metrics_tls = false;
  tandem::AddMetricsTlsFlag(app, &metrics_tls);
  CLI11_PARSE(app, argc, argv);
  if (auto tls = tandem::LoadTls(tls_files); tls.ok()) {
    options.tls = *std::move(tls);
  } else {
    std::fprintf(stderr, "error: %s\n", tls.status().message().c_str());
    return 1;
  }
  if (auto mt = tandem::MetricsTlsFromFlags(options.tls, metrics_tls); mt.ok()) {
    options.metrics_tls = *std::move(mt);
  } else {
    std::fprintf(stderr, "error: %s\n", mt.status().message().c_str());
    return 1;
  }
  if (auto key = tandem::LoadClusterKey(cluster_key_file); key.ok()) {
    options.cluster_key = *std::move(key);
  } else {
    std::fprintf(stderr, "error: %s\n", key.status().message().c_str());
    return 1;
  }
  tandem::SetLogLevel(log_level);
  options.model_dir = model;
  options.engine.kv_cache_bytes = kv_cache_mb << 20;
  options.max_request_time = std::chrono::milliseconds(max_request_ms);
  options.engine.weights = tandem::WeightsFromFlag(weights);
  tandem::ApplyDeviceFlags(device, &options.engine);

  std::unique_ptr<tandem::PrefillServer> server;
  auto start = [&]() -> tandem::Status {
    TANDEM_ASSIGN_OR_RETURN(server, tandem::PrefillServer::Start(options));
    if (!server->metrics_url().empty()) {
      std::cout << "prefill metrics " << server->metrics_url() << std::endl;
    }
    if (tandem::Status st = server->WaitRegistered(std::chrono::seconds(30)); !st.ok()) {
      TLOG_WARN("{}: {}; serving anyway, registration goes on", options.worker_id, st.ToString());
    }
    std::cout << "prefill grpc " << server->address() << std::endl;
    return tandem::Status::Ok();
  };
  // PrefillServer::Shutdown drains: readiness NOT_SERVING, new requests UNAVAILABLE, in-flight
  // ones finish within the budget and the rest are cut.
  auto drain = [&](std::chrono::milliseconds budget) {
    server->Shutdown(budget);
    server.reset();
  };
  return tandem::RunServerUntilSignal(options.worker_id, std::chrono::milliseconds(drain_ms), start,
                                      drain);
}
