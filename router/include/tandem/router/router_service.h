// The public tandem.v1.Tandem service of the router (gRPC callback API): Generate (one reactor
// per stream, see src/generate_call.h), Tokenize and ModelInfo.
//
// Lifecycle: constructed empty ("loading": every call answers UNAVAILABLE), armed once with
// SetBackend, then StartDraining refuses new Generate calls with UNAVAILABLE while the ones in
// flight finish; active_generates() tells when they have.
//
// Thread safety: every method may be called concurrently; SetBackend at most once.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/live_set.h"
#include "tandem/common/metrics.h"
#include "tandem/common/status.h"
#include "tandem/engine/chat_template.h"
#include "tandem/engine/tokenizer.h"
#include "tandem/router/admission.h"
#include "tandem/router/model_meta.h"
#include "tandem/router/prefix_affinity.h"
#include "tandem/router/request_limits.h"
#include "tandem/router/tokenize_queue.h"
#include "tandem/router/worker_pool.h"
#include "tandem/rpc/grpc_keepalive.h"
#include "tandem/rpc/tls_credentials.h"
#include "tandem/v1/generate.grpc.pb.h"

namespace tandem {

class GenerateCall;
class WriteStallWatch;
// The Generate calls in flight (gRPC and HTTP): added at Start, removed when the output is done.
using CallTracker = LiveSet<GenerateCall>;

struct RouterOptions {
  // Checkpoint folder: tokenizer and config JSON files (never weights).
  std::filesystem::path model_dir;
  // Address to serve on. Default: 127.0.0.1, port 0 = pick a free one.
  std::string host = "127.0.0.1";
  int32_t port = 0;
  // Static worker gRPC addresses ("host:port"); more join through the Registry service.
  std::vector<std::string> prefill_addresses;
  std::vector<std::string> decode_addresses;
  // Heartbeat interval asked of registered workers; 3 missed = out of rotation. Default: 1 s.
  std::chrono::milliseconds heartbeat_interval{1000};
  // Silence after which a registered worker counts as lost and its requests move to other
  // workers (a frozen worker; a dead one is seen at once by its reset connections). Default: 10 s.
  std::chrono::milliseconds worker_lost_after{10000};
  // Prometheus /metrics port on `host`: 0 = pick, -1 = none. Default: -1.
  int32_t metrics_port = -1;
  // The metrics port over HTTPS (--metrics-tls). Default: none, plain HTTP.
  MetricsTls metrics_tls;
  // Generate requests in the router at once; more get RESOURCE_EXHAUSTED. Default: 256.
  int32_t max_queue = 256;
  // Threads that template and tokenize Generate requests, and requests that may wait for one
  // (more get RESOURCE_EXHAUSTED). Defaults: 2, 1024.
  int32_t tokenize_threads = 2;
  int32_t max_tokenize_queue = 1024;
  // Deadlines of outbound calls (each also bounded by the client's deadline).
  // Defaults: Reserve 10 s, Prefill 120 s, Decode 600 s, Release 5 s.
  std::chrono::milliseconds reserve_timeout{10000};
  std::chrono::milliseconds prefill_timeout{120000};
  std::chrono::milliseconds decode_timeout{600000};
  std::chrono::milliseconds release_timeout{5000};
  // Lease asked of the decode worker for a reservation. Default: 30 s.
  int32_t lease_ms = 30000;
  // KV transport per (prefill, decode) pair: "auto" (shm on one host when both offer it, else
  // tcp), "tcp" or "shm" (requests fail with FAILED_PRECONDITION where it is impossible).
  // Default: auto.
  std::string kv_transport = "auto";
  // Decode workers tried for one request when Reserve is refused (RESOURCE_EXHAUSTED or
  // UNAVAILABLE). Default: 3.
  int32_t max_reserve_attempts = 3;
  // Times one request may move to other workers after a prefill or decode worker failed under
  // it (connection lost, worker gone from the registry, transfer failed); 0 = fail instead.
  // A decode failover re-prefills prompt + the tokens already streamed and continues with the
  // same sampling state, so the client's stream is unchanged. Default: 3.
  int32_t max_failovers = 3;
  // How long a request that is moving waits for a worker to join when none is left (a restart
  // in progress); the client's deadline bounds it too. Default: 30 s.
  std::chrono::milliseconds failover_wait{30000};
  // How long a request waits for KV pages when every decode worker tried refused its Reserve
  // for want of free pages (RESOURCE_EXHAUSTED): decode workers take generated tokens' pages
  // on demand, so a full pool frees pages as requests finish or are preempted. It retries
  // with a growing pause (10 ms to 500 ms); 0 = fail at once. A request no decode worker's
  // pool could ever hold fails at once; the client's deadline bounds the wait. Default: 30 s.
  std::chrono::milliseconds decode_room_wait{30000};
  // OpenAI-compatible HTTP API port on `host`: 0 = pick, -1 = none. Default: -1.
  int32_t http_port = -1;
  // HTTP requests served at once (a streaming response holds a thread; threads start on
  // demand and end when idle). Default: 256.
  int32_t http_threads = 256;
  // HTTP connections open at once; one more is answered 503 and closed. Default: 1024.
  int32_t http_max_connections = 1024;
  // HTTP connections from one client address at most; 0 = no such cap (behind a proxy every
  // client shares its address). Default: 0.
  int32_t http_max_connections_per_address = 0;
  // Time an HTTP client has to send complete request headers; 408 then. Default: 10 s.
  std::chrono::milliseconds http_header_timeout{10000};
  // Time an HTTP client has to send the whole request body once its headers are complete;
  // 408 then. Default: 30 s.
  std::chrono::milliseconds http_body_timeout{30000};
  // Chat max_tokens when an HTTP request gives none: the rest of the context (decode workers
  // take pages as tokens come), at most this; 0 = no cap. Default: 0.
  int32_t http_chat_max_tokens = 0;
  // Accepted API keys: with any, tandem.v1.Tandem calls need gRPC metadata
  // "authorization: Bearer <key>" and /v1/* HTTP calls the same header (UNAUTHENTICATED / 401
  // otherwise). Health, reflection and metrics stay open; the workers' Registry is guarded by
  // the cluster key instead. Default: none.
  std::vector<std::string> api_keys;
  // The cluster key (tandem/rpc/cluster_auth.h): required of Registry calls, sent with every call
  // to a worker. Default: none.
  std::string cluster_key;
  // gRPC keepalive pings and idle-connection bound (tandem/rpc/grpc_keepalive.h).
  GrpcKeepalive grpc_keepalive;
  // A gRPC Generate stream whose write has not completed this long (the client stopped reading,
  // so HTTP/2 flow control holds the response back) is cancelled: its workers free the pages
  // and its admission slot is given back. 0 = off. Default: 30 s.
  std::chrono::milliseconds grpc_write_stall_timeout{30000};
  // TLS (tandem/rpc/tls_credentials.h): with a certificate, the gRPC port serves TLS (client
  // certificates asked for, verified, required by the Registry when there is a CA) and the HTTP
  // port HTTPS; with a CA, calls to the workers use TLS (mTLS). Default: none, plaintext.
  TlsConfig tls;
  // Bounds on one client request (stop strings, prompt bytes, request id; HTTP body and
  // prompts × n), checked by both front ends before tokenization. Defaults: see the struct.
  RequestLimits limits;
};

// OK when `authorization` ("Bearer <key>", may be empty) carries one of `keys` or `keys` is
// empty; UNAUTHENTICATED saying what is wrong otherwise. Compares in constant time.
Status CheckApiKey(const std::vector<std::string>& keys, std::string_view authorization);

// What a serving router holds: read-only after loading except the load counters.
struct RouterBackend {
  explicit RouterBackend(const RouterOptions& o) : options(o), admission(o.max_queue) {}

  RouterOptions options;
  ModelMeta meta;
  std::unique_ptr<Tokenizer> tokenizer;
  // The chat format, or why there is none (Generate with `chat` then fails with it).
  StatusOr<ChatFormat> chat_format = FailedPreconditionError("no chat template loaded");
  // Generation ends at these unless ignore_eos (config's eos ids, else the tokenizer's).
  std::vector<int32_t> eos_ids;
  std::unique_ptr<WorkerPool> pool;
  Admission admission;
  // The router's metrics (owned by RouterServer); never null while serving.
  Metrics* metrics = nullptr;
  // Which decode worker last finished each prefix (a chat's next turn goes back to it).
  PrefixAffinity affinity;
  // Which prefill worker last computed each prompt prefix (its prefix cache likely holds it).
  PrefixAffinity prefill_affinity;
  // Templating and tokenization, off the gRPC and HTTP threads. Last: destroyed first, running
  // what is queued while everything above still exists.
  std::unique_ptr<TokenizeQueue> tokenize;
};

// Loads tokenizer, config and chat format from options.model_dir and connects the workers.
StatusOr<std::unique_ptr<RouterBackend>> LoadRouterBackend(const RouterOptions& options,
                                                           Metrics* metrics);

class RouterService final : public v1::Tandem::CallbackService {
 public:
  RouterService();
  ~RouterService() override;

  // Also starts the write-stall watch of RouterOptions::grpc_write_stall_timeout.
  void SetBackend(std::unique_ptr<RouterBackend> backend);
  void StartDraining() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  int32_t active_generates() const { return calls_.count(); }
  // For other front ends (the HTTP API) driving the same calls: nullptr while loading, and the
  // calls in flight that drain waits for (and cuts when its budget runs out).
  RouterBackend* backend() const { return backend_.load(); }
  CallTracker& calls() { return calls_; }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* ctx,
                                      const v1::ModelInfoRequest* request,
                                      v1::ModelInfoResponse* response) override;

 private:
  // Set by SetBackend before backend_; outlives every call (it is declared before owned_).
  std::unique_ptr<WriteStallWatch> stall_watch_;
  std::unique_ptr<RouterBackend> owned_;
  std::atomic<RouterBackend*> backend_{nullptr};
  std::atomic<bool> draining_{false};
  CallTracker calls_;
};

}  // namespace tandem
