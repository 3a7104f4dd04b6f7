// PrefillRequest (proto) <-> PrefillJob / PrefillResponse, and Status -> grpc::Status. Private
// to the prefill worker: the only place that reads the request's fields.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/support/status.h>

#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_config.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/prefill_worker/prefill_job.h"
#include "tandem/rpc/grpc_status.h"
#include "tandem/v1/internal.pb.h"

namespace tandem {

struct ConvertLimits {
  const ModelConfig* config = nullptr;
  KvPageLayout layout;  // this worker's layout (fingerprint compared with the ticket)
  Deadline deadline{};  // latest end of the request (gRPC deadline and worker limit)
};

// "tcp://host:port" or "host:port" -> "host:port" ("nccl:host:port" and "shm:<socket>" stay);
// INVALID_ARGUMENT naming ticket.endpoint.
StatusOr<std::string> NormalizeEndpoint(std::string_view endpoint);

// Validates `req` and builds a job (done not set). INVALID_ARGUMENT naming the field,
// FAILED_PRECONDITION when the ticket's layout fingerprint is not ours, DEADLINE_EXCEEDED when
// the ticket's lease already lapsed.
StatusOr<std::shared_ptr<PrefillJob>> MakePrefillJob(const v1::PrefillRequest& req,
                                                     const ConvertLimits& limits);

// Fills the reply from a finished job; the first token's logprobs only when `logprobs` (the
// request's own flag: see tandem/worker/proto_convert.h).
void FillResponse(const PrefillResult& result, bool logprobs, v1::PrefillResponse* resp);

}  // namespace tandem
