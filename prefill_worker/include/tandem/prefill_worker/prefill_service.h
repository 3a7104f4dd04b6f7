// PrefillService: the tandem.v1.PrefillWorker gRPC service (callback API, one unary reactor per
// call). The reactor validates the request, submits a PrefillJob to the Scheduler and calls
// Finish exactly once, from the job's done callback (or at once for a rejected request).
// Nothing in a reaction blocks: OnCancel (client cancel or gRPC deadline) only flags the job and
// calls Transceiver::Cancel; the scheduler then frees the pages.
//
// Status codes: INVALID_ARGUMENT (naming the field), FAILED_PRECONDITION (ticket layout
// fingerprint differs), RESOURCE_EXHAUSTED (queue full / prompt larger than the cache),
// UNAVAILABLE (loading, draining, decode endpoint unreachable), DEADLINE_EXCEEDED, CANCELLED.
//
// Thread safety: Attach / SetDraining may be called from any thread while serving.
#pragma once

#include <atomic>
#include <chrono>
#include <string>

#include "tandem/common/metrics.h"
#include "tandem/engine/model_config.h"
#include "tandem/kvtransfer/layout.h"
#include "tandem/prefill_worker/scheduler.h"
#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

class PrefillService final : public v1::PrefillWorker::CallbackService {
 public:
  // `max_request_time` bounds requests without a (shorter) gRPC deadline.
  // `metrics` must outlive the service. `cluster_key` (tandem/rpc/cluster_auth.h): calls without
  // it are refused UNAUTHENTICATED; empty: none required.
  PrefillService(std::chrono::milliseconds max_request_time, Metrics* metrics,
                 std::string cluster_key = {})
      : max_request_time_(max_request_time),
        metrics_(metrics),
        cluster_key_(std::move(cluster_key)) {}

  // Makes the service ready (until then calls get UNAVAILABLE). The pointees must outlive
  // every call (the server shuts down before they are destroyed). Call once.
  void Attach(const ModelConfig* config, const KvPageLayout& layout, Scheduler* scheduler);
  // New calls get UNAVAILABLE from now on; calls in flight go on.
  void SetDraining() { draining_.store(true); }

  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) override;

 private:
  const std::chrono::milliseconds max_request_time_;
  Metrics* const metrics_;
  const std::string cluster_key_;
  const ModelConfig* config_ = nullptr;
  KvPageLayout layout_;
  Scheduler* scheduler_ = nullptr;
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
};

}  // namespace tandem
