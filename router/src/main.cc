// tandem-router: the front door. Prints "router metrics http://HOST:PORT/metrics", "router http
// HOST:PORT" and then "router grpc HOST:PORT" on stdout once it serves; logs go to stderr.
// SIGTERM / SIGINT drain it (bounded), then it exits.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tandem/common/logging.h"
#include "tandem/common/secret.h"
#include "tandem/router/router_server.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/server_main.h"
#include "tandem/rpc/tls_credentials.h"

int main(int argc, char** argv) {
  CLI::App app{"tandem-router: admission, scheduling and streaming in front of the workers"};
  tandem::RouterOptions opts;
  std::string model = "models/SmolLM2-135M-Instruct";
  int64_t drain_ms = 30000;
  std::string log_level = "info";
  app.add_option("--model", model, "Checkpoint folder or .gguf file (tokenizer and config)")
      ->capture_default_str();
  app.add_option("--host", opts.host, "Address to serve on")->capture_default_str();
  app.add_option("--port", opts.port, "gRPC port (0 = pick)")->capture_default_str();
  app.add_option("--prefill", opts.prefill_addresses, "Prefill worker HOST:PORT (repeatable)");
  app.add_option("--decode", opts.decode_addresses, "Decode worker HOST:PORT (repeatable)");
  app.add_option("--max-queue", opts.max_queue, "Generate requests in the router at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--tokenize-threads", opts.tokenize_threads,
                 "Threads that template and tokenize requests (off the gRPC and HTTP threads)")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--max-tokenize-queue", opts.max_tokenize_queue,
                 "Requests that may wait for a tokenize thread; more get RESOURCE_EXHAUSTED / 429")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  opts.metrics_port = 0;
  app.add_option("--metrics-port", opts.metrics_port,
                 "Prometheus /metrics port (0 = pick, -1 = off)")
      ->capture_default_str();
  int64_t heartbeat_ms = 1000;
  app.add_option("--heartbeat-ms", heartbeat_ms, "Heartbeat interval asked of registered workers")
      ->capture_default_str()
      ->check(CLI::Range(50, 60000));
  tandem::AddDrainFlag(app, &drain_ms);
  int64_t prefill_timeout_ms = 120000, reserve_timeout_ms = 10000;
  app.add_option("--prefill-timeout-ms", prefill_timeout_ms,
                 "Longest wait for a prompt's prefill, queueing on the prefill worker included "
                 "(also bounded by the client's deadline)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--reserve-timeout-ms", reserve_timeout_ms,
                 "Longest wait for a decode worker's page reservation")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--kv-transport", opts.kv_transport,
                 "KV transport per prefill/decode pair: auto (cuda_ipc between CUDA workers on "
                 "one host, else shm on one host, else nccl where both workers offer it, else "
                 "tcp), tcp, shm, cuda_ipc, nccl")
      ->check(CLI::IsMember({"auto", "tcp", "shm", "cuda_ipc", "nccl"}))
      ->capture_default_str();
  app.add_option("--lease-ms", opts.lease_ms,
                 "Lease of a reservation on the decode worker until a prefill worker starts "
                 "sending its KV")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-failovers", opts.max_failovers,
                 "Times a request may move to other workers after one failed under it (the "
                 "stream continues unchanged); 0 = fail instead")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  int64_t worker_lost_ms = opts.worker_lost_after.count();
  app.add_option("--worker-lost-ms", worker_lost_ms,
                 "Silence after which a registered worker is lost and its requests move")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  int64_t decode_room_wait_ms = opts.decode_room_wait.count();
  app.add_option("--decode-room-wait-ms", decode_room_wait_ms,
                 "How long a request waits for KV pages when every decode worker's pool is full "
                 "now (0 = refuse at once with RESOURCE_EXHAUSTED)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  int64_t failover_wait_ms = opts.failover_wait.count();
  app.add_option("--failover-wait-ms", failover_wait_ms,
                 "How long a moving request waits for a worker to join when none is left")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error|off")
      ->capture_default_str();
  opts.http_port = 0;
  app.add_option("--http-port", opts.http_port,
                 "OpenAI-compatible HTTP API port (0 = pick, -1 = off)")
      ->capture_default_str();
  app.add_option("--http-threads", opts.http_threads,
                 "HTTP requests served at once (threads start on demand, end when idle)")
      ->capture_default_str()
      ->check(CLI::Range(4, 4096));
  app.add_option("--http-max-connections", opts.http_max_connections,
                 "HTTP connections open at once; one more is answered 503 and closed")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--http-max-connections-per-address", opts.http_max_connections_per_address,
                 "HTTP connections open at once from one client address; one more is answered "
                 "503 and closed (0 = no such cap; keep 0 behind a proxy)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  int64_t http_header_timeout_ms = opts.http_header_timeout.count();
  app.add_option("--http-header-timeout-ms", http_header_timeout_ms,
                 "Time an HTTP client has to send complete request headers (408 then)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  int64_t http_body_timeout_ms = opts.http_body_timeout.count();
  app.add_option("--http-body-timeout-ms", http_body_timeout_ms,
                 "Time an HTTP client has to send the whole request body once its headers are "
                 "complete (408 then); the body is read without a thread")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  app.add_option("--chat-max-tokens", opts.http_chat_max_tokens,
                 "Cap on HTTP chat max_tokens when a request gives none (0 = no cap: the rest of "
                 "the context)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 24));
  // Request bounds (tandem/router/request_limits.h): INVALID_ARGUMENT / HTTP 400 (413 for the
  // body) naming the field when exceeded.
  tandem::RequestLimits& lim = opts.limits;
  app.add_option("--max-body-bytes", lim.max_body_bytes,
                 "HTTP request body bytes at most, after decoding, chunked or not")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 34));
  app.add_option("--max-prompt-bytes", lim.max_prompt_bytes,
                 "Prompt bytes before tokenization at most (text, or a chat's messages)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 34));
  app.add_option("--max-choices", lim.max_choices,
                 "HTTP: Generate calls one request may start (prompts x n) at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--max-stop-strings", lim.max_stop_strings, "Stop strings per request at most")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 16));
  app.add_option("--max-stop-string-bytes", lim.max_stop_string_bytes,
                 "Bytes of one stop string at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--max-stop-token-ids", lim.max_stop_token_ids,
                 "Stop token ids per request at most")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--max-request-id-bytes", lim.max_request_id_bytes,
                 "Bytes of a client's request_id at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--api-key", opts.api_keys,
                 "Require this API key (repeatable; also $TANDEM_API_KEY)")
      ->envname("TANDEM_API_KEY");
  std::string key_file;
  app.add_option("--api-key-file", key_file, "File with one API key per line (# comments)")
      ->check(CLI::ExistingFile);
  std::string cluster_key_file;
  tandem::AddClusterKeyFlag(app, &cluster_key_file);
  tandem::AddGrpcKeepaliveFlags(app, &opts.grpc_keepalive);
  int64_t write_stall_ms = opts.grpc_write_stall_timeout.count();
  app.add_option("--grpc-write-stall-timeout-ms", write_stall_ms,
                 "A gRPC Generate stream whose client has not read a response message this long "
                 "is cancelled, freeing its admission slot and KV pages (0 = off)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{86400000}));
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
  if (auto cluster_key = tandem::LoadClusterKey(cluster_key_file); cluster_key.ok()) {
    opts.cluster_key = *std::move(cluster_key);
  } else {
    std::fprintf(stderr, "error: %s\n", cluster_key.status().message().c_str());
    return 1;
  }
  if (!key_file.empty()) {
    std::ifstream in(key_file);
    for (std::string line; std::getline(in, line);) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty() && line[0] != '#') opts.api_keys.push_back(line);
    }
    if (opts.api_keys.empty()) {
      std::fprintf(stderr, "error: %s holds no API key\n", key_file.c_str());
      return 1;
    }
  }
  tandem::SetLogLevel(log_level);
  opts.model_dir = model;
  opts.heartbeat_interval = std::chrono::milliseconds(heartbeat_ms);
  opts.failover_wait = std::chrono::milliseconds(failover_wait_ms);
  opts.decode_room_wait = std::chrono::milliseconds(decode_room_wait_ms);
  opts.worker_lost_after = std::chrono::milliseconds(worker_lost_ms);
  opts.http_header_timeout = std::chrono::milliseconds(http_header_timeout_ms);
  opts.http_body_timeout = std::chrono::milliseconds(http_body_timeout_ms);
  opts.prefill_timeout = std::chrono::milliseconds(prefill_timeout_ms);
  opts.reserve_timeout = std::chrono::milliseconds(reserve_timeout_ms);
  opts.grpc_write_stall_timeout = std::chrono::milliseconds(write_stall_ms);

  std::unique_ptr<tandem::RouterServer> server;
  auto start = [&]() -> tandem::Status {
    TANDEM_ASSIGN_OR_RETURN(server, tandem::RouterServer::Start(opts));
    if (!server->metrics_url().empty()) {
      std::printf("router metrics %s\n", server->metrics_url().c_str());
    }
    if (!server->http_address().empty()) {
      std::printf("router http %s\n", server->http_address().c_str());
    }
    std::printf("router grpc %s\n", server->address().c_str());
    std::fflush(stdout);
    return tandem::Status::Ok();
  };
  auto drain = [&](std::chrono::milliseconds budget) {
    server->Drain(budget);
    server.reset();
  };
  return tandem::RunServerUntilSignal("tandem-router", std::chrono::milliseconds(drain_ms), start,
                                      drain);
}
