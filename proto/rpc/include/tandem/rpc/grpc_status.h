// Status ↔ grpc::Status at every service edge. The codes are equal by construction.
#pragma once

#include <grpcpp/support/status.h>

#include "tandem/common/status.h"

namespace tandem {

inline grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

inline Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return Status::Ok();
  return Status(static_cast<StatusCode>(status.error_code()), status.error_message());
}

}  // namespace tandem
