#include "tandem/rpc/grpc_status.h"

#include "tandem/v1/generate.pb.h"

namespace tandem {

grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const auto code = static_cast<grpc::StatusCode>(status.code());
  if (status.field().empty() && status.origin() == ErrorOrigin::kServer) {
    return grpc::Status(code, status.message());
  }
  v1::ErrorDetail detail;
  detail.set_field(status.field());
  detail.set_origin(status.origin() == ErrorOrigin::kPeer ? v1::ERROR_ORIGIN_PEER
                                                          : v1::ERROR_ORIGIN_SERVER);
  v1::RpcStatus rich;  // google.rpc.Status's shape: what gRPC's rich error model expects here
  rich.set_code(static_cast<int32_t>(status.code()));
  rich.set_message(status.message());
  rich.add_details()->PackFrom(detail);
  return grpc::Status(code, status.message(), rich.SerializeAsString());
}

Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return Status::Ok();
  Status s(static_cast<StatusCode>(status.error_code()), status.error_message());
  v1::RpcStatus rich;
  if (status.error_details().empty() || !rich.ParseFromString(status.error_details())) return s;
  v1::ErrorDetail detail;
  for (const auto& any : rich.details()) {
    if (!any.UnpackTo(&detail)) continue;
    s.WithField(detail.field());
    if (detail.origin() == v1::ERROR_ORIGIN_PEER) s.WithOrigin(ErrorOrigin::kPeer);
    break;
  }
  return s;
}

}  // namespace tandem
