#include "tandem/router/router_server.h"

#include <memory>
#include <mutex>
#include <thread>

#include <fmt/ranges.h>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "generate_call.h"
#include "http/http_frontend.h"
#include "tandem/common/logging.h"

namespace tandem {
namespace {

constexpr char kServiceName[] = "tandem.v1.Tandem";
// How long cut calls get to write what they had queued and their error (a client that reads
// nothing holds its call up to the write timeout; past this the servers stop anyway).
constexpr std::chrono::milliseconds kCutGrace{10000};

}  // namespace

StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(const RouterOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::unique_ptr<RouterServer> s(new RouterServer());
  s->metrics_ =
      std::make_unique<Metrics>(MetricRole::kRouter, options.model_dir.filename().string());
  s->service_ = std::make_unique<RouterService>();
  if (options.metrics_port >= 0) {
    // GET /health on the metrics port follows the readiness service (tandem.v1.Tandem), not
    // the HTTP API's /health: workers register through the router's Service, so a probe that
    // waited for them would never let the router become ready (metrics_ stops before service_
    // goes away).
    auto health = [svc = s->service_.get()]() -> std::string {
      if (svc->backend() == nullptr) return "loading";
      return svc->draining() ? "draining" : "ok";
    };
    TANDEM_RETURN_IF_ERROR(
        s->metrics_->Serve(options.host, options.metrics_port, health, options.metrics_tls));
  }
  s->registry_ = std::make_unique<RegistryService>(options.cluster_key, options.tls);
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(fmt::format("{}:{}", options.host, options.port),
                           MakeServerCredentials(options.tls, TlsPeers::kOptionalClientCert),
                           &bound_port);
  ApplyGrpcKeepalive(builder, options.grpc_keepalive);
  builder.RegisterService(s->service_.get());
  builder.RegisterService(s->registry_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || bound_port == 0) {
    return UnavailableError("cannot serve on {}:{}", options.host, options.port);
  }
  s->address_ = fmt::format("{}:{}", options.host, bound_port);
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kServiceName, false);
  if (options.http_port >= 0) {  // up before loading: GET /health says 503 until ready
    http::HttpOptions ho;
    ho.host = options.host;
    ho.port = options.http_port;
    ho.threads = options.http_threads;
    ho.max_connections = options.http_max_connections;
    ho.max_connections_per_address = options.http_max_connections_per_address;
    ho.header_timeout = options.http_header_timeout;
    ho.body_timeout = options.http_body_timeout;
    ho.api_keys = options.api_keys;
    ho.chat_max_tokens = options.http_chat_max_tokens;
    ho.limits = options.limits;
    ho.request_timeout = options.decode_timeout;
    ho.tls_cert_file = options.tls.files.cert;
    ho.tls_key_file = options.tls.files.key;
    TANDEM_ASSIGN_OR_RETURN(s->http_,
                            http::HttpFrontend::Start(ho, s->service_.get(), s->metrics_.get()));
    s->http_address_ = s->http_->address();
  }
  TANDEM_ASSIGN_OR_RETURN(auto backend, LoadRouterBackend(options, s->metrics_.get()));
  {
    RouterBackend* b = backend.get();
    // The admitted counter follows Admission's count: each scrape adds what it gained since
    // the last one (scrapes may run at once: the mutex keeps each increment counted once).
    struct Admitted {
      std::mutex mu;
      int64_t counted = 0;
    };
    s->metrics_->OnScrape([b, m = s->metrics_.get(), admitted = std::make_shared<Admitted>()] {
      m->requests_running().Set(b->admission.in_flight());
      m->requests_waiting().Set(0);
      m->workers("prefill").Set(b->pool->num_prefill());
      m->workers("decode").Set(b->pool->num_decode());
      m->SetPrefillQueuedTokens(b->pool->prefill_queued_tokens());
      m->SetReportedCachedPages(b->pool->reported_cached_pages());
      std::vector<std::pair<std::string, int64_t>> speeds;
      for (const auto& [id, rate] : b->pool->rates().prefill_rates()) {
        speeds.emplace_back(id, static_cast<int64_t>(rate));
      }
      m->SetPrefillSpeeds(speeds);
      std::vector<Metrics::KvLinkRate> links;
      for (const auto& r : b->pool->rates().pair_rates()) {
        links.push_back({r.prefill_id, r.decode_id, r.transport, r.bytes_per_second});
      }
      m->SetKvLinkRates(links);
      std::lock_guard<std::mutex> lock(admitted->mu);
      const int64_t now = b->admission.admitted();
      m->requests_admitted().Increment(static_cast<double>(now - admitted->counted));
      admitted->counted = now;
    });
    s->registry_->SetPool(b->pool.get(), b->meta.name);
    // A worker that left the registry (missed heartbeats: dead or frozen) takes no request
    // down with it: every call using it moves elsewhere.
    b->pool->SetOnLost([svc = s->service_.get()](const void* worker) {
      for (const auto& call : svc->calls().Snapshot()) call->OnWorkerLost(worker);
    });
  }
  TLOG_INFO("router: model {} ({}), {} prefill and {} decode workers, queue {}", backend->meta.name,
            backend->meta.architecture, options.prefill_addresses.size(),
            options.decode_addresses.size(), options.max_queue);
  s->service_->SetBackend(std::move(backend));
  health->SetServingStatus(kServiceName, true);
  return s;
}

RouterServer::~RouterServer() {
  if (http_ != nullptr) http_->Stop();
  if (server_ != nullptr) {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server_->Wait();
  }
}

void RouterServer::Drain(std::chrono::milliseconds timeout) {
  server_->GetHealthCheckService()->SetServingStatus(false);
  service_->StartDraining();
  auto wait_for_calls = [this](std::chrono::steady_clock::time_point until) {
    while (service_->active_generates() > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  wait_for_calls(std::chrono::steady_clock::now() + timeout);
  if (service_->active_generates() > 0) {
    // Out of budget: end every call properly (UNAVAILABLE over gRPC, an error event and [DONE]
    // or a 503 over HTTP); their outbound calls are cancelled, so workers free the pages.
    const std::string why = fmt::format(
        "the router was draining and its drain budget ({} ms) ran out; retry the request",
        timeout.count());
    std::vector<std::string> cut;
    for (const auto& call : service_->calls().Snapshot()) {
      cut.push_back(call->id());
      call->Cut(why);
    }
    TLOG_WARN("router: drain budget ({} ms) ran out; cut {} request(s): {}", timeout.count(),
              cut.size(), fmt::join(cut, ", "));
    wait_for_calls(std::chrono::steady_clock::now() + kCutGrace);
    if (service_->active_generates() > 0) {
      TLOG_WARN("router: {} cut request(s) still writing after {} ms", service_->active_generates(),
                kCutGrace.count());
    }
  }
  if (http_ != nullptr) http_->Stop(kCutGrace);  // HTTP responses write their last events
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  server_.reset();
}

}  // namespace tandem
