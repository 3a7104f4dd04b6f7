// Status <-> grpc::Status at every service edge. The codes are equal by construction; a status's
// field path and origin travel in the details as a serialized tandem.v1.ErrorDetail.
#pragma once

#include <grpcpp/support/status.h>

#include "tandem/common/status.h"

namespace tandem {

grpc::Status ToGrpcStatus(const Status& status);
// Details that are not an ErrorDetail are ignored.
Status FromGrpcStatus(const grpc::Status& status);

}  // namespace tandem
