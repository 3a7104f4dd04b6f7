// Status ↔ grpc::Status at the router's service edge. The codes are equal by construction.
#pragma once

#include <grpcpp/support/status.h>

#include "tandem/common/status.h"

namespace tandem::router {

inline grpc::Status ToGrpcStatus(const Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), status.message());
}

}  // namespace tandem::router
