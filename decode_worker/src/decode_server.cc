#include "tandem/decode_worker/decode_server.h"

#include <algorithm>
#include <memory>
#include <mutex>
#include <thread>

#include <fmt/ranges.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "tandem/common/logging.h"
#include "tandem/engine/prefix_cache.h"
#include "tandem/kvtransfer/transports.h"
#include "tandem/worker/kv_pages.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {
namespace {

// How long cut streams get to write their last tokens and their error.
constexpr std::chrono::milliseconds kCutGrace{10000};

}  // namespace

StatusOr<std::unique_ptr<DecodeServer>> DecodeServer::Start(const DecodeServerOptions& options) {
  std::unique_ptr<DecodeServer> s(new DecodeServer());
  s->metrics_ =
      std::make_unique<Metrics>(MetricRole::kDecode, options.model_dir.filename().string());
  if (options.metrics_port >= 0) {
    TANDEM_RETURN_IF_ERROR(s->metrics_->Serve(
        options.host, options.metrics_port, [srv = s.get()] { return srv->health_.load(); },
        options.metrics_tls));
  }
  s->backend_.metrics = s->metrics_.get();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.host + ":" + std::to_string(options.port),
                           MakeServerCredentials(options.tls, TlsPeers::kRequireClientCert),
                           &s->port_);
  s->service_.SetClusterKey(options.cluster_key);
  ApplyGrpcKeepalive(builder, options.grpc_keepalive);
  builder.RegisterService(&s->service_);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return UnavailableError("cannot serve gRPC on {}:{}", options.host, options.port);
  }
  s->address_ = (options.advertise_host.empty() ? options.host : options.advertise_host) + ":" +
                std::to_string(s->port_);
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kDecodeServiceName, false);
  TLOG_INFO("decode worker {}: gRPC on {}, loading {}", options.worker_id, s->address_,
            options.model_dir.string());

  EngineOptions eo;
  eo.page_size = options.page_size;
  eo.kv_cache_bytes = options.kv_cache_bytes;
  eo.num_threads = options.threads;
  eo.weights = options.weights;
  eo.device = options.backend.device;
  eo.cuda_device = options.backend.cuda_device;
  eo.deterministic = options.backend.deterministic;
  eo.simulate_compute = options.backend.simulate_compute;
  // Reservations take cached prefixes (only the missing pages are shipped); finished requests
  // give their full pages to the cache (GeneratorOptions::cache_prefilled, cache_decoded).
  eo.prefix_cache = options.prefix_cache;
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> transports,
                          ParseKvTransports(options.kv_transport));
  // cuda_ipc: the KV cache is exportable device memory that same-host senders copy into.
  TANDEM_ASSIGN_OR_RETURN(s->device_ipc_,
                          WorkerDeviceIpc(options.kv_transport, options.backend.device,
                                          options.backend.cuda_device, &transports));
  eo.kv_device_export = s->device_ipc_ != nullptr;
  std::vector<std::string> routers;
  if (!options.router.empty()) {
    TANDEM_ASSIGN_OR_RETURN(routers, ParseRouterList(options.router));
  }
  const bool offer_shm =
      std::find(transports.begin(), transports.end(), kKvTransportShm) != transports.end();
  eo.kv_shared_memory = offer_shm;
  auto engine = Engine::Load(options.model_dir, eo);
  if (!engine.ok()) return engine.status();
  s->engine_ = std::move(engine).value();
  // Device pages are received into a host mirror (KvStaging) and copied to the device by the
  // engine loop once a transfer completed; host pages are received in place.
  TANDEM_ASSIGN_OR_RETURN(s->staging_,
                          KvStaging::ForPool(s->engine_->kv_cache().pool(), offer_shm));
  if (s->staging_) {
    TLOG_INFO(
        "decode worker {}: KV pages in {} memory: staged through a host mirror of {} MiB "
        "(mapped)",
        options.worker_id, s->engine_->kv_cache().pool().kind(),
        s->staging_->mirror().bytes() >> 20);
    s->pages_ = std::make_unique<KvCachePages>(s->staging_->mirror());
  } else {
    s->pages_ = std::make_unique<KvCachePages>(s->engine_->kv_cache());
  }

  const KvPageLayout layout = MakeKvPageLayout(*s->engine_);
  TransceiverOptions to;
  to.layout = layout;
  to.listen_host = options.host;
  to.advertise_host = options.advertise_host;
  to.listen_port = options.kv_port;
  if (offer_shm) {
    const PagePool& pool = s->staging_ ? s->staging_->mirror() : s->engine_->kv_cache().pool();
    to.shm_pool = SharedPagePool{pool.shared_fd(), pool.base(), pool.bytes(), pool.num_blocks()};
  }
  TANDEM_ASSIGN_OR_RETURN(const WorkerNcclChoice nccl, WorkerNccl(transports, options.nccl_library,
                                                                  s->engine_->kv_cache().pool()));
  to.nccl = nccl.api;
  if (s->device_ipc_ || nccl.device_pages) {
    // cuda_ipc and a device-memory NCCL write the engine's own device pages.
    s->device_pages_ = std::make_unique<KvCachePages>(s->engine_->kv_cache().pool());
  }
  if (s->device_ipc_) {
    const PagePool& pool = s->engine_->kv_cache().pool();
    if (pool.shared_fd() < 0) {
      return InternalError("the {} KV pool was asked to be exportable and has no descriptor",
                           pool.kind());
    }
    to.device_pool = SharedPagePool{pool.shared_fd(), pool.base(), pool.bytes(), pool.num_blocks()};
    to.device_ipc = s->device_ipc_.get();
    TLOG_INFO("decode worker {}: cuda_ipc senders copy into the KV pages on {} ({} MiB exported)",
              options.worker_id, s->device_ipc_->device_id(), pool.bytes() >> 20);
  }
  if (options.tls.serves_tls()) {
    TANDEM_ASSIGN_OR_RETURN(
        to.tls, KvTls::Create({options.tls.cert_pem, options.tls.key_pem, options.tls.ca_pem}));
  }
  to.max_pending_connections = options.kv_max_pending_connections;
  to.max_connections =
      options.kv_max_connections > 0
          ? options.kv_max_connections
          : std::clamp(s->engine_->kv_cache().allocator().num_blocks() / 16, 16, 256);
  to.handshake_timeout = options.kv_handshake_timeout;
  to.idle_timeout = options.kv_idle_timeout;
  to.metrics = s->metrics_.get();
  TLOG_INFO(
      "decode worker {}: KV listener takes {} connections ({} before the handshake), "
      "handshake within {} ms, idle {} ms",
      options.worker_id, to.max_connections, to.max_pending_connections,
      to.handshake_timeout.count(), to.idle_timeout.count());
  TANDEM_ASSIGN_OR_RETURN(s->transceiver_, Transceiver::Create(to));

  ReservationTableOptions ro = options.reservations;
  ro.max_context = s->engine_->config().max_position_embeddings;
  ro.default_lease = options.default_lease;
  s->table_ =
      std::make_unique<ReservationTable>(s->engine_->kv_cache(), *s->transceiver_, *s->pages_, ro,
                                         s->engine_->prefix_cache(), s->device_pages_.get());
  GeneratorOptions go = options.generator;
  go.cache_prefilled = s->engine_->prefix_cache() != nullptr;
  // Decoded tokens' blocks too where decode rows write bit-for-bit the K/V a prefill would (the
  // CPU backend; tests/engine/decode_kv_parity_test): a later turn's prompt that contains the
  // answer as generated then finds it here. Not verified for the CUDA backend: prompts only.
  go.cache_decoded = go.cache_prefilled && options.backend.device == Device::kCpu &&
                     options.backend.simulate_compute.empty();
  s->loop_ = std::make_unique<EngineLoop>(*s->engine_, go, s->staging_.get());

  s->backend_.engine = s->engine_.get();
  s->backend_.transceiver = s->transceiver_.get();
  s->backend_.table = s->table_.get();
  s->backend_.loop = s->loop_.get();
  s->backend_.layout = layout;
  s->backend_.worker_id = options.worker_id;
  s->backend_.nccl_device_pages = nccl.device_pages;
  s->service_.SetBackend(&s->backend_);
  s->metrics_->OnScrape([srv = s.get(), mu = std::make_shared<std::mutex>()] {
    const WorkerLoad l = srv->Load();
    Metrics& m = *srv->metrics_;
    m.kv_pages_used().Set(l.kv_pages_used);
    m.kv_pages_total().Set(l.kv_pages_total);
    if (PrefixCache* pc = srv->engine_->prefix_cache()) {
      const PrefixCacheStats ps = pc->stats();
      m.kv_pages_cached().Set(ps.cached_blocks);
      // The cache keeps running totals; the counters catch up with them (one scrape at a time).
      std::lock_guard<std::mutex> lock(*mu);
      auto catch_up = [](prometheus::Counter& c, int64_t total) {
        const double delta = static_cast<double>(total) - c.Value();
        if (delta > 0) c.Increment(delta);
      };
      catch_up(m.prefix_cache_lookup_tokens(), ps.lookup_tokens);
      catch_up(m.prefix_cache_hit_tokens(), ps.hit_tokens);
      catch_up(m.prefix_cache_evictions(), ps.evictions);
    }
    m.requests_running().Set(l.requests_running);
    m.requests_waiting().Set(l.requests_waiting);
    int64_t preempted = 0;
    {
      std::lock_guard<std::mutex> lock(srv->components_mu_);
      if (srv->loop_) preempted = srv->loop_->num_preemptions();
    }
    {
      std::lock_guard<std::mutex> lock(*mu);
      const double delta = static_cast<double>(preempted) - m.preemptions().Value();
      if (delta > 0) m.preemptions().Increment(delta);
    }
    if (srv->staging_) {
      m.kv_staged_bytes().Increment(static_cast<double>(srv->staging_->TakeStagedBytes()));
    }
  });
  health->SetServingStatus(kDecodeServiceName, true);
  s->health_.store("ok");
  if (!options.router.empty()) {
    WorkerRegistrationOptions ro;
    ro.routers = routers;
    ro.cluster_key = options.cluster_key;
    ro.channel_credentials = MakeChannelCredentials(options.tls);
    ro.announce.set_worker_id(options.worker_id);
    ro.announce.set_role(v1::WORKER_ROLE_DECODE);
    ro.announce.set_address(s->address_);
    ro.announce.set_model(options.model_dir.filename().string());
    ro.announce.set_device(s->engine_->runner().Describe());
    ro.announce.set_host_id(LocalHostId());
    if (PrefixCache* pc = s->engine_->prefix_cache()) {
      ro.announce.set_prefix_root_key(pc->root_key());
      ro.cache_report = [pc](bool full) {
        PrefixCacheChanges c = pc->TakeChanges(full);
        return WorkerCacheReport{std::move(c.added), std::move(c.evicted), c.full};
      };
    }
    for (const std::string& t : transports) ro.announce.add_kv_transports(t);
    ToProto(layout, ro.announce.mutable_layout());
    s->registration_ = std::make_unique<WorkerRegistration>(
        std::move(ro), [srv = s.get()] { return srv->Load(); });
  }
  const PageUsage p = s->pages();
  TLOG_INFO(
      "decode worker {} ready: gRPC {}, KV {}{}{}, layout {}, pages used {}/{}", options.worker_id,
      s->address_, s->transceiver_->endpoint(), offer_shm ? " and " : "",
      s->transceiver_->shm_endpoint() +
          (s->transceiver_->nccl_endpoint().empty() ? ""
                                                    : " and " + s->transceiver_->nccl_endpoint()) +
          (s->transceiver_->cuda_ipc_endpoint().empty()
               ? ""
               : " and " + s->transceiver_->cuda_ipc_endpoint()),
      layout.Describe(), p.used, p.total);
  return s;
}

DecodeServer::~DecodeServer() { Shutdown(); }

Status DecodeServer::WaitRegistered(std::chrono::milliseconds timeout) {
  if (!registration_) return Status::Ok();
  return registration_->WaitRegistered(timeout);
}

WorkerLoad DecodeServer::Load() const {
  std::lock_guard<std::mutex> lock(components_mu_);
  WorkerLoad l;
  const PageUsage p = pages();
  l.kv_pages_used = p.used;
  l.kv_pages_total = p.total;
  const int32_t running = loop_ ? loop_->num_active() : 0;
  const int32_t live = table_ ? table_->num_live() : 0;
  l.requests_running = running;
  l.requests_waiting = live;  // reserved, KV not yet handed to the batch (never in `running`)
  return l;
}

PageUsage DecodeServer::pages() const {
  PageUsage p;
  if (!engine_) return p;
  // Idle cached pages are free for the taking (a reservation evicts them): not "used".
  p.used = engine_->kv_blocks_in_use();
  p.total = engine_->kv_cache().allocator().num_blocks();
  return p;
}

void DecodeServer::Drain(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  health_.store("draining");
  service_.SetDraining();
  if (registration_) registration_->SetDraining();
  server_->GetHealthCheckService()->SetServingStatus(kDecodeServiceName, false);
  TLOG_INFO("decode worker {}: draining ({} streams, {} reservations)", backend_.worker_id,
            service_.active_streams(), table_ ? table_->num_live() : 0);
  auto wait_until = [this](std::chrono::steady_clock::time_point until) {
    while (std::chrono::steady_clock::now() < until &&
           (service_.active_streams() > 0 || (table_ && table_->num_live() > 0))) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  };
  wait_until(std::chrono::steady_clock::now() + grace);
  if (service_.active_streams() > 0) {
    // Out of budget: every stream ends with UNAVAILABLE (never a cut connection) and its
    // request is cancelled, which frees its pages.
    const std::vector<std::string> cut = service_.CutStreams(fmt::format(
        "decode worker {} was draining and its drain budget ({} ms) ran out; retry the request",
        backend_.worker_id, grace.count()));
    TLOG_WARN("decode worker {}: drain budget ({} ms) ran out; cut {} stream(s): {}",
              backend_.worker_id, grace.count(), cut.size(), fmt::join(cut, ", "));
    // Their cancellations reach the batch at the loop's next step, which frees the pages.
    const auto until = std::chrono::steady_clock::now() + kCutGrace;
    while (std::chrono::steady_clock::now() < until &&
           (service_.active_streams() > 0 || (loop_ && loop_->num_active() > 0))) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  const PageUsage p = pages();
  TLOG_INFO("decode worker {}: drained; {} streams left, pages used {}/{}", backend_.worker_id,
            service_.active_streams(), p.used, p.total);
  Shutdown(std::chrono::milliseconds(100));
}

void DecodeServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  health_.store("draining");
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    // Calls still running after `grace` are cancelled; their reactors finish promptly.
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }
  if (loop_) loop_->Stop();
  registration_.reset();
  std::lock_guard<std::mutex> lock(components_mu_);
  table_.reset();
  transceiver_.reset();
  loop_.reset();
  const PageUsage p = pages();
  TLOG_INFO("decode worker {} stopped; pages used {}/{}", backend_.worker_id, p.used, p.total);
}

}  // namespace tandem
