#include "tandem/decode_worker/decode_server.h"

#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include "tandem/common/logging.h"

namespace tandem {

StatusOr<std::unique_ptr<DecodeServer>> DecodeServer::Start(const DecodeServerOptions& options) {
  std::unique_ptr<DecodeServer> s(new DecodeServer());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.host + ":" + std::to_string(options.port),
                           grpc::InsecureServerCredentials(), &s->port_);
  builder.RegisterService(&s->service_);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || s->port_ == 0) {
    return UnavailableError("cannot serve gRPC on {}:{}", options.host, options.port);
  }
  s->address_ = options.host + ":" + std::to_string(s->port_);
  grpc::HealthCheckServiceInterface* health = s->server_->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(kDecodeServiceName, false);
  TLOG_INFO("decode worker {}: gRPC on {}, loading {}", options.worker_id, s->address_,
            options.model_dir.string());

  EngineOptions eo;
  eo.page_size = options.page_size;
  eo.kv_cache_bytes = options.kv_cache_bytes;
  eo.num_threads = options.threads;
  auto engine = Engine::Load(options.model_dir, eo);
  if (!engine.ok()) return engine.status();
  s->engine_ = std::move(engine).value();
  s->pages_ = std::make_unique<decode::KvCachePages>(s->engine_->kv_cache());

  TANDEM_ASSIGN_OR_RETURN(KvPageLayout layout, decode::MakeKvPageLayout(*s->engine_));
  TransceiverOptions to;
  to.layout = layout;
  to.listen_host = options.host;
  to.listen_port = options.kv_port;
  TANDEM_ASSIGN_OR_RETURN(s->transceiver_, Transceiver::Create(to));

  ReservationTableOptions ro = options.reservations;
  ro.max_context = s->engine_->config().max_position_embeddings;
  ro.default_lease = options.default_lease;
  s->table_ =
      std::make_unique<ReservationTable>(s->engine_->kv_cache(), *s->transceiver_, *s->pages_, ro);
  s->loop_ = std::make_unique<EngineLoop>(*s->engine_, options.generator);

  s->backend_.engine = s->engine_.get();
  s->backend_.transceiver = s->transceiver_.get();
  s->backend_.table = s->table_.get();
  s->backend_.loop = s->loop_.get();
  s->backend_.layout = layout;
  s->backend_.worker_id = options.worker_id;
  s->service_.SetBackend(&s->backend_);
  health->SetServingStatus(kDecodeServiceName, true);
  const PageUsage p = s->pages();
  TLOG_INFO("decode worker {} ready: gRPC {}, KV {}, layout {}, pages used {}/{}",
            options.worker_id, s->address_, s->transceiver_->endpoint(), layout.Describe(), p.used,
            p.total);
  return s;
}

DecodeServer::~DecodeServer() { Shutdown(); }

PageUsage DecodeServer::pages() const {
  PageUsage p;
  if (!engine_) return p;
  const BlockAllocator& a = engine_->kv_cache().allocator();
  p.used = a.num_used();
  p.total = a.num_blocks();
  return p;
}

void DecodeServer::Drain(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  service_.SetDraining();
  server_->GetHealthCheckService()->SetServingStatus(kDecodeServiceName, false);
  TLOG_INFO("decode worker {}: draining ({} streams, {} reservations)", backend_.worker_id,
            service_.active_streams(), table_ ? table_->num_live() : 0);
  while (std::chrono::steady_clock::now() < deadline &&
         (service_.active_streams() > 0 || (table_ && table_->num_live() > 0))) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Shutdown(std::chrono::milliseconds(100));
}

void DecodeServer::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    server_->GetHealthCheckService()->SetServingStatus(false);
    // Calls still running after `grace` are cancelled; their reactors finish promptly.
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }
  if (loop_) loop_->Stop();
  table_.reset();
  transceiver_.reset();
  loop_.reset();
  const PageUsage p = pages();
  TLOG_INFO("decode worker {} stopped; pages used {}/{}", backend_.worker_id, p.used, p.total);
}

}  // namespace tandem
