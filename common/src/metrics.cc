// The one place every Tandem metric is described. Names carry their unit; every series has the
// labels role and model. Which process exports what:
//
// clang-format off
// | metric | type | router | prefill | decode |
// |---|---|---|---|---|
// | tandem_queue_seconds | histogram | arrival → decode worker reserved | arrival → first chunk scheduled | reservation → joined the batch |
// | tandem_prefill_compute_seconds | histogram | | forward passes of one prompt | |
// | tandem_kv_transfer_seconds{transport} | histogram | | last prompt chunk computed → every layer acknowledged by the receiver | |
// | tandem_kv_transfer_bytes{transport} | histogram | | bytes of one prompt's KV | |
// | tandem_time_to_first_token_seconds | histogram | arrival → first token sent | | |
// | tandem_inter_token_latency_seconds | histogram | between streamed tokens | | between steps of a request |
// | tandem_e2e_request_latency_seconds | histogram | arrival → final message | | |
// | tandem_requests_running | gauge | admitted, not finished | prefilling or transferring | in the batch |
// | tandem_requests_waiting | gauge | (bounded queue: not used, admission refuses) | queued | reserved, KV not yet in the batch |
// | tandem_kv_pages_used / _total | gauge | | own KV pages held by requests (idle cached pages excluded) | KV pages (reserved included) |
// | tandem_kv_pages_cached | gauge | | pages held by the prefix cache (in use or idle, evictable) | same |
// | tandem_prefix_cache_lookup_tokens_total | counter | | prompt tokens looked up in the prefix cache | prompt tokens of reservations that named them, and tokens of preempted requests' recomputes |
// | tandem_prefix_cache_hit_tokens_total | counter | | of those, tokens whose KV came from the cache (hit rate = hit / lookup) | of those, tokens whose KV the decode worker held (not shipped) |
// | tandem_prefix_cache_evictions_total | counter | | cached pages evicted to make room | same |
// | tandem_kv_pages_sent_total | counter | | KV pages shipped to decode workers (all layers of a page count once) | |
// | tandem_kv_pages_not_sent_total | counter | | prompt KV pages not shipped: the decode worker held them (its prefix cache) | |
// | tandem_preemptions_total | counter | | | requests preempted for pages (they recompute their KV here and go on) |
// | tandem_workers{kind} | gauge | prefill / decode workers in rotation | | |
// | tandem_prefill_queued_tokens{worker} | gauge | prompt tokens sent to that prefill worker, not yet answered | | |
// | tandem_reported_cached_pages{worker} | gauge | prefix-cache pages that worker reported in its heartbeats (the routing index) | | |
// | tandem_prefill_speed_tokens_per_second{worker} | gauge | computed prompt tokens per second of compute, measured from that prefill worker's replies (moving average; the routing estimate) | | |
// | tandem_kv_link_bytes_per_second{prefill,decode,transport} | gauge | KV bytes per second of wire time, measured from that pair's transfers (moving average; the routing estimate) | | |
// | tandem_requests_admitted_total | counter | requests admitted (past validation and the bounded queue) | | |
// | tandem_prompt_tokens_total | counter | prompts admitted | prompts prefilled | |
// | tandem_generation_tokens_total | counter | tokens streamed | | tokens sampled |
// | tandem_kv_transfer_failures_total | counter | | sends that failed | receives that failed |
// | tandem_kv_staged_bytes_total | counter | | KV bytes copied device → host mirror | KV bytes copied host mirror → device |
// | tandem_retries_total | counter | Reserves re-sent: to another worker, or again after waiting for KV pages | | |
// | tandem_failovers_total{phase} | counter | requests moved to other workers after one failed (phase: prefill, decode) | | |
// | tandem_failover_seconds | histogram | worker failure seen → first token (or final) from the new workers | | |
// | tandem_request_errors_total{code} | counter | requests ended in that status | same | same |
// | tandem_http_connections | gauge | HTTP connections open (idle, reading headers or served) | | |
// | tandem_http_connections_closed_total{reason} | counter | HTTP connections closed, by reason | | |
// | tandem_grpc_write_stalls_total | counter | gRPC streams cancelled because the client stopped reading (--grpc-write-stall-timeout-ms) | | |
// | tandem_kv_connections{state} | gauge | | KV connections (handshake, open) | same |
// | tandem_kv_connections_closed_total{reason} | counter | | KV connections closed, by reason | same |
// clang-format on
//
// tandem-planner's own metrics (tandem_planner_*, role="planner") have their table in
// planner/include/tandem/planner/planner_metrics.h.
#include "tandem/common/metrics.h"

#include "tandem/common/metrics_http.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <sstream>

#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>

#include "tandem/common/logging.h"

namespace tandem {
namespace {

constexpr uint32_t kRouter = 1u << 0;
constexpr uint32_t kPrefill = 1u << 1;
constexpr uint32_t kDecode = 1u << 2;

uint32_t Bit(MetricRole role) {
  switch (role) {
    case MetricRole::kRouter:
      return kRouter;
    case MetricRole::kPrefill:
      return kPrefill;
    case MetricRole::kDecode:
      return kDecode;
  }
  return 0;
}

// Request-scale latencies: 5 ms … 2 min.
const prometheus::Histogram::BucketBoundaries kLatency = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0};
// Compute and transfer: 1 ms … 1 min.
const prometheus::Histogram::BucketBoundaries kCompute = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0};
// Between tokens: 5 ms … 2.5 s.
const prometheus::Histogram::BucketBoundaries kInterToken = {
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5};
// KV bytes of one prompt: 64 KiB … 16 GiB, ×4.
const prometheus::Histogram::BucketBoundaries kBytes = {
    65536.0,    262144.0,    1048576.0,    4194304.0,    16777216.0,
    67108864.0, 268435456.0, 1073741824.0, 4294967296.0, 17179869184.0};

}  // namespace

std::string_view MetricRoleName(MetricRole role) {
  switch (role) {
    case MetricRole::kRouter:
      return "router";
    case MetricRole::kPrefill:
      return "prefill";
    case MetricRole::kDecode:
      return "decode";
  }
  return "unknown";
}

// Runs the scrape callbacks, then collects the registry.
class Metrics::Scrape : public prometheus::Collectable {
 public:
  explicit Scrape(std::shared_ptr<prometheus::Registry> registry)
      : registry_(std::move(registry)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<std::function<void()>> hooks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      hooks = hooks_;
    }
    for (const auto& h : hooks) h();
    return registry_->Collect();
  }

  void Add(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    hooks_.push_back(std::move(fn));
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  mutable std::mutex mu_;
  std::vector<std::function<void()>> hooks_;
};

Metrics::Metrics(MetricRole role, std::string_view model)
    : role_(role), model_(model), registry_(std::make_shared<prometheus::Registry>()) {
  scrape_ = std::make_shared<Scrape>(registry_);
  const uint32_t me = Bit(role);
  const std::map<std::string, std::string> labels = {{"role", std::string(MetricRoleName(role))},
                                                     {"model", model_}};
  auto histogram = [&](uint32_t roles, const char* name, const char* help,
                       const prometheus::Histogram::BucketBoundaries& buckets) {
    if ((roles & me) == 0) return static_cast<prometheus::Histogram*>(nullptr);
    auto& fam = prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_);
    return &fam.Add(labels, buckets);
  };
  auto gauge = [&](uint32_t roles, const char* name, const char* help) {
    if ((roles & me) == 0) return static_cast<prometheus::Gauge*>(nullptr);
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels);
  };
  auto counter = [&](uint32_t roles, const char* name, const char* help) {
    if ((roles & me) == 0) return static_cast<prometheus::Counter*>(nullptr);
    return &prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels);
  };

  queue_seconds_ =
      histogram(kRouter | kPrefill | kDecode, "tandem_queue_seconds",
                "Time a request waited before its work began in this process", kLatency);
  prefill_compute_seconds_ = histogram(kPrefill, "tandem_prefill_compute_seconds",
                                       "Forward-pass time spent on one prompt", kCompute);
  if (me & kPrefill) {
    auto& seconds = prometheus::BuildHistogram()
                        .Name("tandem_kv_transfer_seconds")
                        .Help(
                            "From the prompt's last chunk computed to every KV layer "
                            "acknowledged by the decode worker, by transport")
                        .Register(*registry_);
    auto& bytes = prometheus::BuildHistogram()
                      .Name("tandem_kv_transfer_bytes")
                      .Help("KV bytes moved for one prompt, by transport")
                      .Register(*registry_);
    for (int i = 0; i < kTransports; ++i) {
      auto l = labels;
      l["transport"] = i == 1 ? "shm" : i == 2 ? "nccl" : i == 3 ? "cuda_ipc" : "tcp";
      kv_transfer_seconds_[i] = &seconds.Add(l, kCompute);
      kv_transfer_bytes_[i] = &bytes.Add(l, kBytes);
    }
  }
  ttft_seconds_ = histogram(kRouter, "tandem_time_to_first_token_seconds",
                            "From arrival to the first generated token sent", kLatency);
  itl_seconds_ = histogram(kRouter | kDecode, "tandem_inter_token_latency_seconds",
                           "Time between consecutive generated tokens of one request", kInterToken);
  e2e_seconds_ = histogram(kRouter, "tandem_e2e_request_latency_seconds",
                           "From arrival to the final message", kLatency);
  requests_running_ = gauge(kRouter | kPrefill | kDecode, "tandem_requests_running",
                            "Requests being worked on in this process");
  requests_waiting_ = gauge(kRouter | kPrefill | kDecode, "tandem_requests_waiting",
                            "Requests waiting for this process to start them");
  kv_pages_used_ =
      gauge(kPrefill | kDecode, "tandem_kv_pages_used", "KV cache pages in use (reserved too)");
  kv_pages_total_ = gauge(kPrefill | kDecode, "tandem_kv_pages_total", "KV cache pages in all");
  kv_pages_cached_ = gauge(kPrefill | kDecode, "tandem_kv_pages_cached",
                           "KV cache pages held by the prefix cache (in use or idle)");
  prefix_lookup_tokens_ = counter(kPrefill | kDecode, "tandem_prefix_cache_lookup_tokens_total",
                                  "Prompt tokens looked up in the prefix cache");
  prefix_hit_tokens_ = counter(kPrefill | kDecode, "tandem_prefix_cache_hit_tokens_total",
                               "Prompt tokens whose KV came from the prefix cache");
  prefix_evictions_ = counter(kPrefill | kDecode, "tandem_prefix_cache_evictions_total",
                              "Cached KV pages evicted to make room");
  kv_pages_sent_ = counter(kPrefill, "tandem_kv_pages_sent_total",
                           "KV pages shipped to decode workers (all layers of a page count once)");
  kv_pages_not_sent_ =
      counter(kPrefill, "tandem_kv_pages_not_sent_total",
              "Prompt KV pages not shipped because the decode worker held them (its prefix cache)");
  grpc_write_stalls_ =
      counter(kRouter, "tandem_grpc_write_stalls_total",
              "gRPC streams cancelled because the client stopped reading (a write stalled)");
  preemptions_ = counter(kDecode, "tandem_preemptions_total",
                         "Requests preempted when KV pages ran out (they recompute and go on)");
  if (me & kRouter) {
    workers_ = &prometheus::BuildGauge()
                    .Name("tandem_workers")
                    .Help("Workers in rotation, by kind (prefill, decode)")
                    .Register(*registry_);
    workers("prefill");
    workers("decode");
    prefill_queued_tokens_ =
        &prometheus::BuildGauge()
             .Name("tandem_prefill_queued_tokens")
             .Help(
                 "Prompt tokens this router sent to a prefill worker and has no answer for yet, "
                 "by worker")
             .Register(*registry_);
    reported_cached_pages_ =
        &prometheus::BuildGauge()
             .Name("tandem_reported_cached_pages")
             .Help(
                 "Prefix-cache pages a worker reported holding in its heartbeats (the router's "
                 "index for cache-aware routing), by worker")
             .Register(*registry_);
    prefill_speeds_ = &prometheus::BuildGauge()
                           .Name("tandem_prefill_speed_tokens_per_second")
                           .Help(
                               "Prompt tokens a prefill worker computes per second of compute, "
                               "measured from its replies (moving average), by worker")
                           .Register(*registry_);
    kv_link_rates_ = &prometheus::BuildGauge()
                          .Name("tandem_kv_link_bytes_per_second")
                          .Help(
                              "KV bytes per second of wire time between a prefill and a decode "
                              "worker, measured from their transfers (moving average)")
                          .Register(*registry_);
  }
  prompt_tokens_ = counter(kRouter | kPrefill, "tandem_prompt_tokens_total",
                           "Prompt tokens admitted (router) or prefilled (prefill worker)");
  generation_tokens_ = counter(kRouter | kDecode, "tandem_generation_tokens_total",
                               "Generated tokens streamed (router) or sampled (decode worker)");
  kv_transfer_failures_ = counter(kPrefill | kDecode, "tandem_kv_transfer_failures_total",
                                  "KV transfers that failed in this process");
  kv_staged_bytes_ =
      counter(kPrefill | kDecode, "tandem_kv_staged_bytes_total",
              "KV bytes copied between device pages and their host mirror (TCP transport)");
  retries_ = counter(kRouter, "tandem_retries_total",
                     "Requests re-sent to another worker after a refusal");
  if (me & kRouter) {
    auto& failovers = prometheus::BuildCounter()
                          .Name("tandem_failovers_total")
                          .Help(
                              "Requests moved to other workers after a worker failed, by the "
                              "phase it failed in (prefill, decode)")
                          .Register(*registry_);
    for (int i = 0; i < kPhases; ++i) {
      auto l = labels;
      l["phase"] = i == 1 ? "decode" : "prefill";
      failovers_[i] = &failovers.Add(l);
    }
  }
  failover_seconds_ = histogram(kRouter, "tandem_failover_seconds",
                                "From a worker failure seen to the request's next token or final "
                                "message from the workers it moved to",
                                kLatency);
  requests_admitted_ = counter(kRouter, "tandem_requests_admitted_total",
                               "Requests admitted: valid, and a place in the bounded queue");
  errors_ = &prometheus::BuildCounter()
                 .Name("tandem_request_errors_total")
                 .Help("Requests that ended with an error, by gRPC status code")
                 .Register(*registry_);
  http_connections_ = gauge(kRouter, "tandem_http_connections",
                            "HTTP connections open (idle, reading headers or being served)");
  if (me & kRouter) {
    http_closed_ = &prometheus::BuildCounter()
                        .Name("tandem_http_connections_closed_total")
                        .Help("HTTP connections closed, by reason")
                        .Register(*registry_);
  }
  if (me & (kPrefill | kDecode)) {
    kv_connections_ = &prometheus::BuildGauge()
                           .Name("tandem_kv_connections")
                           .Help("KV transfer connections, by state (handshake, open)")
                           .Register(*registry_);
    kv_closed_ = &prometheus::BuildCounter()
                      .Name("tandem_kv_connections_closed_total")
                      .Help("KV transfer connections closed, by reason")
                      .Register(*registry_);
  }
}

Metrics::~Metrics() = default;

Status Metrics::Serve(const std::string& host, int port, std::function<std::string()> health,
                      const MetricsTls& tls) {
  std::lock_guard<std::mutex> lock(mu_);
  if (http_) return FailedPreconditionError("metrics already served at {}", http_->url());
  TANDEM_ASSIGN_OR_RETURN(http_,
                          MetricsHttpServer::Start(
                              host, port, [this] { return Render(); }, std::move(health), tls));
  return Status::Ok();
}

std::string Metrics::url() const {
  std::lock_guard<std::mutex> lock(mu_);
  return http_ ? http_->url() : "";
}

std::string Metrics::Render() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, scrape_->Collect());
  return out.str();
}

void Metrics::OnScrape(std::function<void()> refresh) { scrape_->Add(std::move(refresh)); }

template <typename T>
T& Metrics::Get(const T* metric, const char* name) const {
  if (metric == nullptr) {
    Logger().critical("metric {} is not exported by the {} role", name, MetricRoleName(role_));
    std::abort();
  }
  return *const_cast<T*>(metric);
}

prometheus::Histogram& Metrics::queue_seconds() { return Get(queue_seconds_, "queue_seconds"); }
prometheus::Histogram& Metrics::prefill_compute_seconds() {
  return Get(prefill_compute_seconds_, "prefill_compute_seconds");
}
prometheus::Histogram& Metrics::kv_transfer_seconds(std::string_view transport) {
  return Get(kv_transfer_seconds_[TransportIndex(transport)], "kv_transfer_seconds");
}
prometheus::Histogram& Metrics::kv_transfer_bytes(std::string_view transport) {
  return Get(kv_transfer_bytes_[TransportIndex(transport)], "kv_transfer_bytes");
}
prometheus::Histogram& Metrics::time_to_first_token_seconds() {
  return Get(ttft_seconds_, "time_to_first_token_seconds");
}
prometheus::Histogram& Metrics::inter_token_latency_seconds() {
  return Get(itl_seconds_, "inter_token_latency_seconds");
}
prometheus::Histogram& Metrics::e2e_request_latency_seconds() {
  return Get(e2e_seconds_, "e2e_request_latency_seconds");
}
prometheus::Gauge& Metrics::requests_running() {
  return Get(requests_running_, "requests_running");
}
prometheus::Gauge& Metrics::requests_waiting() {
  return Get(requests_waiting_, "requests_waiting");
}
prometheus::Gauge& Metrics::kv_pages_used() { return Get(kv_pages_used_, "kv_pages_used"); }
prometheus::Gauge& Metrics::kv_pages_total() { return Get(kv_pages_total_, "kv_pages_total"); }
prometheus::Gauge& Metrics::kv_pages_cached() { return Get(kv_pages_cached_, "kv_pages_cached"); }
prometheus::Counter& Metrics::prefix_cache_lookup_tokens() {
  return Get(prefix_lookup_tokens_, "prefix_cache_lookup_tokens");
}
prometheus::Counter& Metrics::prefix_cache_hit_tokens() {
  return Get(prefix_hit_tokens_, "prefix_cache_hit_tokens");
}
prometheus::Counter& Metrics::prefix_cache_evictions() {
  return Get(prefix_evictions_, "prefix_cache_evictions");
}
prometheus::Counter& Metrics::kv_pages_sent() { return Get(kv_pages_sent_, "kv_pages_sent"); }
prometheus::Counter& Metrics::kv_pages_not_sent() {
  return Get(kv_pages_not_sent_, "kv_pages_not_sent");
}
prometheus::Counter& Metrics::grpc_write_stalls() {
  return Get(grpc_write_stalls_, "grpc_write_stalls");
}
prometheus::Counter& Metrics::preemptions() { return Get(preemptions_, "preemptions"); }
prometheus::Gauge& Metrics::workers(std::string_view kind) {
  auto& fam = Get(workers_, "workers");
  std::lock_guard<std::mutex> lock(mu_);
  return fam.Add({{"role", std::string(MetricRoleName(role_))},
                  {"model", model_},
                  {"kind", std::string(kind)}});
}
prometheus::Counter& Metrics::prompt_tokens() { return Get(prompt_tokens_, "prompt_tokens"); }
prometheus::Counter& Metrics::generation_tokens() {
  return Get(generation_tokens_, "generation_tokens");
}
prometheus::Counter& Metrics::kv_transfer_failures() {
  return Get(kv_transfer_failures_, "kv_transfer_failures");
}
prometheus::Counter& Metrics::kv_staged_bytes() { return Get(kv_staged_bytes_, "kv_staged_bytes"); }
prometheus::Counter& Metrics::retries() { return Get(retries_, "retries"); }
prometheus::Counter& Metrics::failovers(std::string_view phase) {
  return Get(failovers_[phase == "decode" ? 1 : 0], "failovers");
}
prometheus::Histogram& Metrics::failover_seconds() {
  return Get(failover_seconds_, "failover_seconds");
}
prometheus::Counter& Metrics::requests_admitted() {
  return Get(requests_admitted_, "requests_admitted");
}

void Metrics::SetPrefillQueuedTokens(
    const std::vector<std::pair<std::string, int64_t>>& per_worker) {
  SetPerWorker(Get(prefill_queued_tokens_, "prefill_queued_tokens"), per_worker, &queued_workers_);
}

void Metrics::SetReportedCachedPages(
    const std::vector<std::pair<std::string, int64_t>>& per_worker) {
  SetPerWorker(Get(reported_cached_pages_, "reported_cached_pages"), per_worker, &cached_workers_);
}

void Metrics::SetPrefillSpeeds(const std::vector<std::pair<std::string, int64_t>>& per_worker) {
  SetPerWorker(Get(prefill_speeds_, "prefill_speeds"), per_worker, &speed_workers_);
}

void Metrics::SetKvLinkRates(const std::vector<KvLinkRate>& links) {
  auto& fam = Get(kv_link_rates_, "kv_link_rates");
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::map<std::string, std::string>> now;
  for (const auto& l : links) {
    now.push_back({{"role", std::string(MetricRoleName(role_))},
                   {"model", model_},
                   {"prefill", l.prefill},
                   {"decode", l.decode},
                   {"transport", l.transport}});
    fam.Add(now.back()).Set(l.bytes_per_second);
  }
  for (const auto& labels : link_series_) {
    if (std::find(now.begin(), now.end(), labels) == now.end()) fam.Remove(&fam.Add(labels));
  }
  link_series_ = std::move(now);
}

void Metrics::SetPerWorker(prometheus::Family<prometheus::Gauge>& fam,
                           const std::vector<std::pair<std::string, int64_t>>& per_worker,
                           std::vector<std::string>* series) {
  auto labels = [&](const std::string& worker) {
    return std::map<std::string, std::string>{
        {"role", std::string(MetricRoleName(role_))}, {"model", model_}, {"worker", worker}};
  };
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> now;
  for (const auto& [worker, tokens] : per_worker) {
    fam.Add(labels(worker)).Set(static_cast<double>(tokens));
    now.push_back(worker);
  }
  for (const auto& w : *series) {
    if (std::find(now.begin(), now.end(), w) == now.end()) fam.Remove(&fam.Add(labels(w)));
  }
  *series = std::move(now);
}

prometheus::Gauge& Metrics::http_connections() {
  return Get(http_connections_, "http_connections");
}

prometheus::Counter& Metrics::http_connections_closed(std::string_view reason) {
  return Get(http_closed_, "http_connections_closed")
      .Add({{"role", std::string(MetricRoleName(role_))},
            {"model", model_},
            {"reason", std::string(reason)}});
}

prometheus::Gauge& Metrics::kv_connections(std::string_view state) {
  return Get(kv_connections_, "kv_connections")
      .Add({{"role", std::string(MetricRoleName(role_))},
            {"model", model_},
            {"state", std::string(state)}});
}

prometheus::Counter& Metrics::kv_connections_closed(std::string_view reason) {
  return Get(kv_closed_, "kv_connections_closed")
      .Add({{"role", std::string(MetricRoleName(role_))},
            {"model", model_},
            {"reason", std::string(reason)}});
}

void Metrics::CountError(StatusCode code) {
  if (code == StatusCode::kOk) return;
  errors_
      ->Add({{"role", std::string(MetricRoleName(role_))},
             {"model", model_},
             {"code", std::string(StatusCodeName(code))}})
      .Increment();
}

}  // namespace tandem
