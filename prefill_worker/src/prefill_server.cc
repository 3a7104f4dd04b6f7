#include "tandem/prefill_worker/prefill_server.h"

#include <mutex>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "tandem/common/logging.h"
#include "tandem/engine/kv_staging.h"
#include "tandem/engine/prefix_cache.h"
#include "tandem/kvtransfer/transports.h"
#include "tandem/worker/kv_pages.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {

StatusOr<std::unique_ptr<PrefillServer>> PrefillServer::Start(const PrefillServerOptions& options) {
  std::vector<std::string> routers;
  if (!options.router.empty()) {
    TANDEM_ASSIGN_OR_RETURN(routers, ParseRouterList(options.router));
  }
  std::unique_ptr<PrefillServer> s(new PrefillServer());
  s->metrics_ =
      std::make_unique<Metrics>(MetricRole::kPrefill, options.model_dir.filename().string());
  if (options.metrics_port >= 0) {
    TANDEM_RETURN_IF_ERROR(s->metrics_->Serve(
        options.host, options.metrics_port, [srv = s.get()] { return srv->health_.load(); },
        options.metrics_tls));
  }
  s->service_ = std::make_unique<PrefillService>(options.max_request_time, s->metrics_.get(),
                                                 options.cluster_key);

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0;
  builder.AddListeningPort(options.host + ":" + std::to_string(options.port),
                           MakeServerCredentials(options.tls, TlsPeers::kRequireClientCert),
                           &bound_port);
  ApplyGrpcKeepalive(builder, options.grpc_keepalive);
  builder.RegisterService(s->service_.get());
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || bound_port == 0) {
    return UnavailableError("cannot serve gRPC on {}:{}", options.host, options.port);
  }
  s->port_ = bound_port;
  s->address_ = (options.advertise_host.empty() ? options.host : options.advertise_host) + ":" +
                std::to_string(bound_port);
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);  // liveness
  health->SetServingStatus(kHealthService, false);
  TLOG_INFO("{}: gRPC on {}, loading {}", options.worker_id, s->address_,
            options.model_dir.string());

  auto fail = [&](Status st) -> Status {
    s->server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    s->server_->Wait();
    return st;
  };
  auto engine = Engine::Load(options.model_dir, options.engine);
  if (!engine.ok()) return fail(engine.status());
  s->engine_ = std::move(engine).value();
  // Device pages go over the TCP transport through a host mirror (KvStaging); host pages need
  // none.
  auto staging = KvStaging::ForPool(s->engine_->kv_cache().pool());
  if (!staging.ok()) return fail(staging.status());
  if (*staging) {
    TLOG_INFO("{}: KV pages in {} memory: staged through a host mirror of {} MiB (mapped)",
              options.worker_id, s->engine_->kv_cache().pool().kind(),
              (*staging)->mirror().bytes() >> 20);
  }
  s->layout_ = MakeKvPageLayout(*s->engine_);

  TransceiverOptions topt;
  topt.layout = s->layout_;
  topt.listen = false;  // sender only
  topt.connect_timeout = options.connect_timeout;
  auto transports = ParseKvTransports(options.kv_transport);
  if (!transports.ok()) return fail(transports.status());
  // cuda_ipc: copies device pages into same-host decode workers' exported device pages.
  auto device_ipc = WorkerDeviceIpc(options.kv_transport, options.engine.device,
                                    options.engine.cuda_device, &*transports);
  if (!device_ipc.ok()) return fail(device_ipc.status());
  s->device_ipc_ = std::move(device_ipc).value();
  topt.device_ipc = s->device_ipc_.get();
  s->kv_transports_ = *transports;
  auto nccl = WorkerNccl(*transports, options.nccl_library, s->engine_->kv_cache().pool());
  if (!nccl.ok()) return fail(nccl.status());
  topt.nccl = nccl->api;
  SchedulerOptions scheduler_options = options.scheduler;
  scheduler_options.nccl_device_pages = nccl->device_pages;
  if (options.tls.dials_tls()) {
    auto kv_tls = KvTls::Create({options.tls.cert_pem, options.tls.key_pem, options.tls.ca_pem});
    if (!kv_tls.ok()) return fail(kv_tls.status());
    topt.tls = *kv_tls;
  }
  auto transceiver = Transceiver::Create(topt);
  if (!transceiver.ok()) return fail(transceiver.status());
  s->transceiver_ = std::move(transceiver).value();
  s->scheduler_ = std::make_unique<Scheduler>(*s->engine_, *s->transceiver_, scheduler_options,
                                              std::move(staging).value());
  s->service_->Attach(&s->engine_->config(), s->layout_, s->scheduler_.get());
  s->metrics_->OnScrape([srv = s.get(), mu = std::make_shared<std::mutex>()] {
    const SchedulerStats st = srv->stats();
    Metrics& m = *srv->metrics_;
    m.kv_pages_used().Set(st.kv_pages_used);
    m.kv_pages_total().Set(st.kv_pages_total);
    m.kv_pages_cached().Set(st.kv_pages_cached);
    {
      // The cache keeps running totals; the counters catch up with them (one scrape at a time).
      std::lock_guard<std::mutex> lock(*mu);
      auto catch_up = [](prometheus::Counter& c, int64_t total) {
        const double delta = static_cast<double>(total) - c.Value();
        if (delta > 0) c.Increment(delta);
      };
      catch_up(m.prefix_cache_lookup_tokens(), st.prefix_lookup_tokens);
      catch_up(m.prefix_cache_hit_tokens(), st.prefix_hit_tokens);
      catch_up(m.prefix_cache_evictions(), st.prefix_evictions);
    }
    m.requests_waiting().Set(static_cast<double>(st.queued));
    m.requests_running().Set(static_cast<double>(st.computing + st.transferring));
    m.kv_staged_bytes().Increment(static_cast<double>(srv->TakeStagedBytes()));
  });
  health->SetServingStatus(kHealthService, true);
  s->health_.store("ok");
  if (!options.router.empty()) {
    WorkerRegistrationOptions ro;
    ro.routers = routers;
    ro.cluster_key = options.cluster_key;
    ro.channel_credentials = MakeChannelCredentials(options.tls);
    ro.announce.set_worker_id(options.worker_id);
    ro.announce.set_role(v1::WORKER_ROLE_PREFILL);
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
    ro.announce.set_sends_from_first_block(true);
    for (const std::string& t : s->kv_transports_) ro.announce.add_kv_transports(t);
    ToProto(s->layout_, ro.announce.mutable_layout());
    s->registration_ = std::make_unique<WorkerRegistration>(std::move(ro), [srv = s.get()] {
      const SchedulerStats st = srv->stats();
      WorkerLoad load;
      load.kv_pages_used = st.kv_pages_used;
      load.kv_pages_total = st.kv_pages_total;
      load.requests_running = static_cast<int32_t>(st.computing + st.transferring);
      load.requests_waiting = static_cast<int32_t>(st.queued);
      load.queued_prompt_tokens = st.queued_tokens;
      return load;
    });
  }
  s->worker_id_ = options.worker_id;
  TLOG_INFO("{}: serving, {} KV pages, layout {}", options.worker_id, s->kv_pages_total(),
            s->layout_.Describe());
  return s;
}

PrefillServer::~PrefillServer() { Shutdown(std::chrono::milliseconds(0)); }

int32_t PrefillServer::kv_pages_used() const { return engine_ ? engine_->kv_blocks_in_use() : 0; }

int32_t PrefillServer::kv_pages_total() const {
  return engine_ ? engine_->kv_cache().allocator().num_blocks() : 0;
}

SchedulerStats PrefillServer::stats() const {
  std::lock_guard<std::mutex> lock(components_mu_);
  return scheduler_ ? scheduler_->stats() : SchedulerStats{};
}

int64_t PrefillServer::TakeStagedBytes() {
  std::lock_guard<std::mutex> lock(components_mu_);
  return scheduler_ ? scheduler_->TakeStagedBytes() : 0;
}

Status PrefillServer::WaitRegistered(std::chrono::milliseconds timeout) {
  if (!registration_) return Status::Ok();
  return registration_->WaitRegistered(timeout);
}

void PrefillServer::Shutdown(std::chrono::milliseconds drain_timeout) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  health_.store("draining");
  server_->GetHealthCheckService()->SetServingStatus(kHealthService, false);
  // The router first: once it knows, it sends no new prompt here, so none is refused below that
  // it had already chosen this worker for (a refused prompt fails its request).
  if (registration_) {
    registration_->SetDraining();
    if (Status st = registration_->WaitDrainingAcknowledged(std::chrono::seconds(5)); !st.ok()) {
      TLOG_WARN("{}: {}", worker_id_, st.ToString());
    }
  }
  service_->SetDraining();
  const auto until = std::chrono::steady_clock::now() + drain_timeout;
  while (scheduler_ && scheduler_->active_jobs() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (scheduler_ && scheduler_->active_jobs() > 0) {
    TLOG_WARN("{}: drain budget ({} ms) ran out with {} requests in flight; cutting them",
              worker_id_, drain_timeout.count(), scheduler_->active_jobs());
    // Every remaining job ends with UNAVAILABLE naming the drain (each logged), so the
    // shutdown below returns quickly.
    scheduler_->Stop(fmt::format(
        "prefill worker {} was draining and its drain budget ({} ms) ran out; retry the request",
        worker_id_, drain_timeout.count()));
  }
  if (scheduler_) scheduler_->Stop();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_->Wait();
  registration_.reset();
  TLOG_INFO("{}: drained; pages used {}/{}", worker_id_, kv_pages_used(), kv_pages_total());
  std::lock_guard<std::mutex> components(components_mu_);
  scheduler_.reset();
  transceiver_.reset();
}

}  // namespace tandem
