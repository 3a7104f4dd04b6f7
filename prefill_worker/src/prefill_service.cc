#include "tandem/prefill_worker/prefill_service.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "request_convert.h"
#include "tandem/common/logging.h"
#include "tandem/kvtransfer/transports.h"
#include "tandem/rpc/cluster_auth.h"

namespace tandem {
namespace {

// One Prefill call. Deletes itself in OnDone. Finish runs exactly once: either in Start (request
// rejected) or from the job's done callback, which the scheduler runs exactly once.
class PrefillReactor final : public grpc::ServerUnaryReactor {
 public:
  PrefillReactor(grpc::CallbackServerContext* context, v1::PrefillResponse* response,
                 Metrics* metrics)
      : context_(context), response_(response), metrics_(metrics) {}

  void Reject(const Status& status) {
    TLOG_INFO("prefill rejected: {}", status.ToString());
    metrics_->CountError(status.code());
    Finish(ToGrpcStatus(status));
  }

  void Start(Scheduler* scheduler, std::shared_ptr<PrefillJob> job, bool logprobs) {
    scheduler_ = scheduler;
    job_ = job;
    job->done = [this, logprobs, job = job.get()](const Status& status,
                                                  const PrefillResult& result) {
      if (status.ok()) {
        FillResponse(result, logprobs, response_);
        metrics_->queue_seconds().Observe(result.queue_seconds);
        metrics_->prefill_compute_seconds().Observe(result.compute_seconds);
        const std::string_view transport = KvTransportOfEndpoint(job->ticket.dest_endpoint);
        metrics_->kv_transfer_seconds(transport).Observe(result.transfer_seconds);
        metrics_->kv_transfer_bytes(transport).Observe(static_cast<double>(result.transfer_bytes));
        metrics_->kv_pages_sent().Increment(result.transfer_pages);
        metrics_->kv_pages_not_sent().Increment(result.pages_not_sent);
        metrics_->prompt_tokens().Increment(static_cast<double>(job->prompt_tokens()));
      } else {
        metrics_->CountError(status.code());
        // The callback runs on the job's owning thread, so its fields are safe to read here.
        if (!job->send_error.ok()) metrics_->kv_transfer_failures().Increment();
      }
      Finish(ToGrpcStatus(status));
    };
    if (Status s = scheduler->Submit(job); !s.ok()) {
      job_.reset();
      Reject(s);
    }
  }

  void OnCancel() override {
    if (!job_) return;
    const bool expired = context_->deadline() <= std::chrono::system_clock::now();
    scheduler_->Cancel(
        job_, expired ? DeadlineExceededError("req={}: gRPC deadline passed", job_->request_id)
                      : CancelledError("req={}: cancelled by the client", job_->request_id));
  }

  void OnDone() override { delete this; }

 private:
  grpc::CallbackServerContext* context_;
  v1::PrefillResponse* response_;
  Metrics* metrics_;
  Scheduler* scheduler_ = nullptr;
  std::shared_ptr<PrefillJob> job_;
};

}  // namespace

void PrefillService::Attach(const ModelConfig* config, const KvPageLayout& layout,
                            Scheduler* scheduler) {
  config_ = config;
  layout_ = layout;
  scheduler_ = scheduler;
  ready_.store(true, std::memory_order_release);
}

grpc::ServerUnaryReactor* PrefillService::Prefill(grpc::CallbackServerContext* context,
                                                  const v1::PrefillRequest* request,
                                                  v1::PrefillResponse* response) {
  auto* reactor = new PrefillReactor(context, response, metrics_);
  if (Status st = CheckClusterKey(context, cluster_key_, "tandem.v1.PrefillWorker"); !st.ok()) {
    reactor->Reject(st);
    return reactor;
  }
  if (!ready_.load(std::memory_order_acquire)) {
    reactor->Reject(UnavailableError("req={}: prefill worker is loading", request->request_id()));
    return reactor;
  }
  if (draining_.load()) {
    reactor->Reject(UnavailableError("req={}: prefill worker is draining", request->request_id()));
    return reactor;
  }
  ConvertLimits limits;
  limits.config = config_;
  limits.layout = layout_;
  const auto now_sys = std::chrono::system_clock::now();
  const auto now = std::chrono::steady_clock::now();
  Deadline deadline = now + max_request_time_;
  const auto grpc_deadline = context->deadline();
  if (grpc_deadline < now_sys + max_request_time_) {
    deadline = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                         std::max(grpc_deadline - now_sys, std::chrono::system_clock::duration(0)));
  }
  limits.deadline = deadline;
  auto job = MakePrefillJob(*request, limits);
  if (!job.ok()) {
    reactor->Reject(job.status());
    return reactor;
  }
  TLOG_DEBUG("req={} received: {} prompt tokens -> {}", request->request_id(),
             request->prompt_token_ids_size(), (*job)->ticket.dest_endpoint);
  reactor->Start(scheduler_, std::move(job).value(), request->logprobs());
  return reactor;
}

}  // namespace tandem
