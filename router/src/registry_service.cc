#include "tandem/router/registry_service.h"

#include "tandem/common/logging.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_status.h"

namespace tandem {

void RegistryService::SetPool(WorkerPool* pool, std::string model) {
  model_ = std::move(model);
  pool_.store(pool);
}

grpc::ServerUnaryReactor* RegistryService::Register(grpc::CallbackServerContext* ctx,
                                                    const v1::RegisterRequest* request,
                                                    v1::RegisterResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Status st = RequireVerifiedPeerCertificate(ctx, tls_, "tandem.v1.Registry");
  if (st.ok()) st = CheckClusterKey(ctx, cluster_key_, "tandem.v1.Registry");
  if (!st.ok()) {
    TLOG_WARN("registry call from {} refused: {}", ctx->peer(), st.message());
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  WorkerPool* pool = pool_.load();
  if (pool == nullptr) {
    reactor->Finish(ToGrpcStatus(UnavailableError("router is loading")));
    return reactor;
  }
  if (!request->model().empty() && request->model() != model_) {
    reactor->Finish(
        ToGrpcStatus(FailedPreconditionError("model: worker {} serves {}, this router serves {}",
                                             request->worker_id(), request->model(), model_)));
    return reactor;
  }
  st = pool->Register(*request);
  if (st.ok()) {
    response->set_heartbeat_interval_ms(static_cast<int32_t>(pool->heartbeat_interval().count()));
  }
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

grpc::ServerUnaryReactor* RegistryService::Heartbeat(grpc::CallbackServerContext* ctx,
                                                     const v1::HeartbeatRequest* request,
                                                     v1::HeartbeatResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  Status st = RequireVerifiedPeerCertificate(ctx, tls_, "tandem.v1.Registry");
  if (st.ok()) st = CheckClusterKey(ctx, cluster_key_, "tandem.v1.Registry");
  if (!st.ok()) {
    TLOG_WARN("registry call from {} refused: {}", ctx->peer(), st.message());
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  WorkerPool* pool = pool_.load();
  if (pool == nullptr) {
    reactor->Finish(ToGrpcStatus(UnavailableError("router is loading")));
    return reactor;
  }
  response->set_known(pool->Heartbeat(*request));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tandem
