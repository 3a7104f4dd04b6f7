#include "tandem/decode_worker/decode_service.h"

#include <chrono>

#include "decode_stream.h"
#include "tandem/common/logging.h"
#include "tandem/kvtransfer/transports.h"
#include "tandem/rpc/cluster_auth.h"
#include "tandem/rpc/grpc_status.h"
#include "tandem/worker/proto_convert.h"

namespace tandem {
namespace {

constexpr std::string_view kServiceName = "tandem.v1.DecodeWorker";

// A Decode call refused before it started.
class RefusedDecode final : public grpc::ServerWriteReactor<v1::DecodeResponse> {
 public:
  explicit RefusedDecode(const Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

}  // namespace

grpc::ServerUnaryReactor* DecodeService::Reserve(grpc::CallbackServerContext* ctx,
                                                 const v1::ReserveRequest* request,
                                                 v1::ReserveResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (Status st = CheckClusterKey(ctx, cluster_key_, kServiceName); !st.ok()) {
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  DecodeBackend* b = backend_.load();
  if (b == nullptr) {
    reactor->Finish(ToGrpcStatus(UnavailableError("model is loading")));
    return reactor;
  }
  if (draining_.load()) {
    reactor->Finish(ToGrpcStatus(UnavailableError("decode worker {} is draining", b->worker_id)));
    return reactor;
  }
  auto res = b->table->Reserve(
      request->request_id(), request->prompt_tokens(), request->max_tokens(),
      std::chrono::milliseconds(request->lease_ms()),
      std::span<const int32_t>(request->prompt_token_ids().data(),
                               static_cast<size_t>(request->prompt_token_ids_size())),
      /*into_device=*/request->kv_transport() == kKvTransportCudaIpc ||
          (request->kv_transport() == kKvTransportNccl && b->nccl_device_pages));
  if (!res.ok()) {
    TLOG_INFO("req={} reserve refused: {}", request->request_id(), res.status().ToString());
    b->metrics->CountError(res.status().code());
    reactor->Finish(ToGrpcStatus(res.status()));
    return reactor;
  }
  if (ctx->IsCancelled()) {
    // The router gave up on this call (cancelled, deadline) while it was on its way: nobody will
    // use the pages. Its own Release may have come first, so do not wait for the lease.
    (void)b->table->Release(request->request_id());
    reactor->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "Reserve was cancelled"));
    return reactor;
  }
  v1::TransferTicket* t = response->mutable_ticket();
  t->set_request_id(request->request_id());
  for (int32_t block : res->prompt_blocks) t->add_block_ids(block);
  t->set_endpoint(b->transceiver->endpoint());
  t->set_shm_endpoint(b->transceiver->shm_endpoint());
  // Device-memory NCCL writes the device pages: only into a reservation made for it.
  if (!b->nccl_device_pages || request->kv_transport() == kKvTransportNccl) {
    t->set_nccl_endpoint(b->transceiver->nccl_endpoint());
  }
  if (request->kv_transport() == kKvTransportCudaIpc) {
    t->set_cuda_ipc_endpoint(b->transceiver->cuda_ipc_endpoint());
  }
  t->set_transfer_token(res->transfer_token);
  t->set_first_block(res->first_block);
  ToProto(b->layout, t->mutable_layout());
  t->set_lease_deadline_unix_micros(std::chrono::duration_cast<std::chrono::microseconds>(
                                        res->lease_deadline_wall.time_since_epoch())
                                        .count());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<v1::DecodeResponse>* DecodeService::Decode(
    grpc::CallbackServerContext* ctx, const v1::DecodeRequest* request) {
  if (Status st = CheckClusterKey(ctx, cluster_key_, kServiceName); !st.ok()) {
    return new RefusedDecode(st);
  }
  return DecodeStream::Create(backend_.load(), &streams_, *request);
}

grpc::ServerUnaryReactor* DecodeService::Release(grpc::CallbackServerContext* ctx,
                                                 const v1::ReleaseRequest* request,
                                                 v1::ReleaseResponse* response) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  if (Status st = CheckClusterKey(ctx, cluster_key_, kServiceName); !st.ok()) {
    reactor->Finish(ToGrpcStatus(st));
    return reactor;
  }
  DecodeBackend* b = backend_.load();
  if (b == nullptr) {
    reactor->Finish(ToGrpcStatus(UnavailableError("model is loading")));
    return reactor;
  }
  reactor->Finish(ToGrpcStatus(b->table->Release(request->request_id())));
  return reactor;
}

std::vector<std::string> DecodeService::CutStreams(const std::string& why) {
  std::vector<std::string> ids;
  for (const auto& stream : streams_.Snapshot()) {
    ids.push_back(stream->id());
    stream->Cut(why);
  }
  return ids;
}

}  // namespace tandem
