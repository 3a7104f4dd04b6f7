// Every Prometheus metric Tandem exports is declared in common/src/metrics.cc: name, help, type,
// buckets and the roles (router, prefill, decode) that export it. A process makes one Metrics
// with its role and model, updates what it owns, and serves the text exposition on
// GET http://HOST:PORT/metrics. Every series carries the labels role="…" and model="…".
//
// Gauges that mirror live state (pages in use, requests running) are refreshed by callbacks run
// at each scrape (OnScrape), so the exposition is never staler than the scrape itself.
//
// Asking for a metric the role does not export is a programming error (TANDEM_CHECK).
//
// Thread safety: every method may be called from any thread; OnScrape callbacks run on the
// exposer's HTTP threads and must be thread safe themselves.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "tandem/common/metrics_http.h"
#include "tandem/common/status.h"

namespace tandem {

enum class MetricRole { kRouter, kPrefill, kDecode };

std::string_view MetricRoleName(MetricRole role);

class Metrics {
 public:
  Metrics(MetricRole role, std::string_view model);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // Serves GET /metrics on host:port (port 0 = pick a free one), and GET /health when `health`
  // is given (MetricsHttpServer::HealthFn: "ok" is 200, any other word 503 naming it).
  // With `tls`, over HTTPS. UNAVAILABLE naming the address when it cannot bind;
  // INVALID_ARGUMENT naming the files when `tls` cannot be loaded; FAILED_PRECONDITION when
  // already serving.
  Status Serve(const std::string& host, int port, std::function<std::string()> health = nullptr,
               const MetricsTls& tls = {});
  // "http://host:port/metrics" ("https://" with TLS) once serving, else "".
  std::string url() const;
  // The text exposition as a scrape would return it (runs the OnScrape callbacks).
  std::string Render() const;
  // `refresh` runs before every scrape / Render.
  void OnScrape(std::function<void()> refresh);

  MetricRole role() const { return role_; }

  // Histograms (seconds, bytes). See metrics.cc for what each one measures per role.
  prometheus::Histogram& queue_seconds();
  prometheus::Histogram& prefill_compute_seconds();
  // Labelled by KV transport: "tcp", "shm" or "nccl" (anything else counts as tcp).
  prometheus::Histogram& kv_transfer_seconds(std::string_view transport);
  prometheus::Histogram& kv_transfer_bytes(std::string_view transport);
  prometheus::Histogram& time_to_first_token_seconds();
  prometheus::Histogram& inter_token_latency_seconds();
  prometheus::Histogram& e2e_request_latency_seconds();
  // Gauges.
  prometheus::Gauge& requests_running();
  prometheus::Gauge& requests_waiting();
  prometheus::Gauge& kv_pages_used();
  prometheus::Gauge& kv_pages_total();
  prometheus::Gauge& kv_pages_cached();               // pages the prefix cache holds
  prometheus::Gauge& workers(std::string_view kind);  // router: workers in rotation per kind
  // Router: tandem_prefill_queued_tokens{worker} for exactly these (worker id, tokens) pairs;
  // the series of a worker no longer listed is removed.
  void SetPrefillQueuedTokens(const std::vector<std::pair<std::string, int64_t>>& per_worker);
  // Router: tandem_reported_cached_pages{worker}: prefix-cache pages each worker reported in
  // its heartbeats (the router's index), likewise.
  void SetReportedCachedPages(const std::vector<std::pair<std::string, int64_t>>& per_worker);
  // Router: tandem_prefill_speed_tokens_per_second{worker}: computed prompt tokens per second
  // of compute it measured per prefill worker (the routing estimate), likewise.
  void SetPrefillSpeeds(const std::vector<std::pair<std::string, int64_t>>& per_worker);
  // Router: tandem_kv_link_bytes_per_second{prefill,decode,transport}: KV bytes per second of
  // wire time it measured per pair, for exactly these (prefill, decode, transport, rate).
  struct KvLinkRate {
    std::string prefill, decode, transport;
    double bytes_per_second = 0;
  };
  void SetKvLinkRates(const std::vector<KvLinkRate>& links);
  // Router: HTTP connections open now; closed ones by reason (over_limit, header_timeout,
  // headers_too_large, body_timeout, body_too_large, idle, client_closed, served, shutdown,
  // no_thread, error; router/src/http/http_server.h has them all).
  prometheus::Gauge& http_connections();
  prometheus::Counter& http_connections_closed(std::string_view reason);
  // Prefill and decode: KV transfer connections by state (handshake, open); closed ones by
  // reason (over_pending_limit, over_limit, handshake_timeout, idle_timeout, bad_handshake,
  // peer_closed, shutdown).
  prometheus::Gauge& kv_connections(std::string_view state);
  prometheus::Counter& kv_connections_closed(std::string_view reason);
  // Counters.
  prometheus::Counter& prompt_tokens();
  prometheus::Counter& generation_tokens();
  prometheus::Counter& kv_transfer_failures();
  prometheus::Counter& kv_staged_bytes();
  prometheus::Counter& retries();
  // Prefill and decode: the prefix cache's running totals (tokens looked up, hit, pages evicted).
  prometheus::Counter& prefix_cache_lookup_tokens();
  prometheus::Counter& prefix_cache_hit_tokens();
  prometheus::Counter& prefix_cache_evictions();
  // Prefill: KV pages shipped to decode workers (every layer of a page counts once).
  prometheus::Counter& kv_pages_sent();
  // Prefill: prompt pages not shipped because the decode worker held them already.
  prometheus::Counter& kv_pages_not_sent();
  // Router: gRPC streams cancelled because the client stopped reading (a write in flight past
  // --grpc-write-stall-timeout-ms).
  prometheus::Counter& grpc_write_stalls();
  // Decode: requests preempted when KV pages ran out (they recompute their K/V and go on).
  prometheus::Counter& preemptions();
  // Router: requests moved to other workers; `phase` "prefill" or "decode".
  prometheus::Counter& failovers(std::string_view phase);
  prometheus::Histogram& failover_seconds();
  prometheus::Counter& requests_admitted();
  // tandem_request_errors_total{code="INVALID_ARGUMENT"…}: requests that ended in that status.
  void CountError(StatusCode code);

 private:
  struct Spec;
  class Scrape;
  template <typename T>
  T& Get(const T* metric, const char* name) const;

  const MetricRole role_;
  const std::string model_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<Scrape> scrape_;
  std::unique_ptr<MetricsHttpServer> http_;
  mutable std::mutex mu_;  // guards http_ and the lazily made series

  prometheus::Histogram* queue_seconds_ = nullptr;
  prometheus::Histogram* prefill_compute_seconds_ = nullptr;
  static constexpr int kTransports = 4;  // tcp, shm, nccl, cuda_ipc
  static int TransportIndex(std::string_view transport) {
    return transport == "shm" ? 1 : transport == "nccl" ? 2 : transport == "cuda_ipc" ? 3 : 0;
  }
  prometheus::Histogram* kv_transfer_seconds_[kTransports] = {};
  prometheus::Histogram* kv_transfer_bytes_[kTransports] = {};
  prometheus::Histogram* ttft_seconds_ = nullptr;
  prometheus::Histogram* itl_seconds_ = nullptr;
  prometheus::Histogram* e2e_seconds_ = nullptr;
  prometheus::Gauge* requests_running_ = nullptr;
  prometheus::Gauge* requests_waiting_ = nullptr;
  prometheus::Gauge* kv_pages_used_ = nullptr;
  prometheus::Gauge* kv_pages_total_ = nullptr;
  prometheus::Gauge* kv_pages_cached_ = nullptr;
  prometheus::Counter* prefix_lookup_tokens_ = nullptr;
  prometheus::Counter* prefix_hit_tokens_ = nullptr;
  prometheus::Counter* prefix_evictions_ = nullptr;
  prometheus::Family<prometheus::Gauge>* workers_ = nullptr;
  prometheus::Family<prometheus::Gauge>* prefill_queued_tokens_ = nullptr;
  std::vector<std::string> queued_workers_;  // series of prefill_queued_tokens_ (guarded by mu_)
  prometheus::Family<prometheus::Gauge>* reported_cached_pages_ = nullptr;
  std::vector<std::string> cached_workers_;  // series of reported_cached_pages_ (guarded by mu_)
  prometheus::Family<prometheus::Gauge>* prefill_speeds_ = nullptr;
  std::vector<std::string> speed_workers_;  // series of prefill_speeds_ (guarded by mu_)
  prometheus::Family<prometheus::Gauge>* kv_link_rates_ = nullptr;
  std::vector<std::map<std::string, std::string>> link_series_;  // (guarded by mu_)
  void SetPerWorker(prometheus::Family<prometheus::Gauge>& fam,
                    const std::vector<std::pair<std::string, int64_t>>& per_worker,
                    std::vector<std::string>* series);
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generation_tokens_ = nullptr;
  prometheus::Counter* kv_transfer_failures_ = nullptr;
  prometheus::Counter* kv_staged_bytes_ = nullptr;
  prometheus::Counter* kv_pages_sent_ = nullptr;
  prometheus::Counter* kv_pages_not_sent_ = nullptr;
  prometheus::Counter* preemptions_ = nullptr;
  prometheus::Counter* grpc_write_stalls_ = nullptr;
  prometheus::Counter* retries_ = nullptr;
  static constexpr int kPhases = 2;  // prefill, decode
  prometheus::Counter* failovers_[kPhases] = {};
  prometheus::Histogram* failover_seconds_ = nullptr;
  prometheus::Counter* requests_admitted_ = nullptr;
  prometheus::Family<prometheus::Counter>* errors_ = nullptr;
  prometheus::Gauge* http_connections_ = nullptr;
  prometheus::Family<prometheus::Counter>* http_closed_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_connections_ = nullptr;
  prometheus::Family<prometheus::Counter>* kv_closed_ = nullptr;
};

}  // namespace tandem
