#include "tandem/router/worker_pool.h"

#include <limits>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

namespace tandem {
namespace {

// Index of the smallest load, scanning from a rotating start so ties go round robin.
template <typename Worker, typename Load>
Worker* PickLeast(const std::vector<std::unique_ptr<Worker>>& workers, std::atomic<uint64_t>* rr,
                  Load load) {
  if (workers.empty()) return nullptr;
  const size_t n = workers.size();
  const size_t start = static_cast<size_t>(rr->fetch_add(1) % n);
  Worker* best = nullptr;
  int64_t best_load = std::numeric_limits<int64_t>::max();
  for (size_t k = 0; k < n; ++k) {
    Worker* w = workers[(start + k) % n].get();
    const int64_t l = load(*w);
    if (l < best_load) {
      best_load = l;
      best = w;
    }
  }
  return best;
}

}  // namespace

WorkerPool::WorkerPool(const std::vector<std::string>& prefill_addresses,
                       const std::vector<std::string>& decode_addresses) {
  for (const auto& a : prefill_addresses) {
    auto w = std::make_unique<PrefillWorkerRef>();
    w->address = a;
    w->stub =
        v1::PrefillWorker::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials()));
    prefill_.push_back(std::move(w));
  }
  for (const auto& a : decode_addresses) {
    auto w = std::make_unique<DecodeWorkerRef>();
    w->address = a;
    w->stub = v1::DecodeWorker::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials()));
    decode_.push_back(std::move(w));
  }
}

PrefillWorkerRef* WorkerPool::PickPrefill() {
  return PickLeast(prefill_, &prefill_rr_,
                   [](const PrefillWorkerRef& w) { return w.queued_tokens.load(); });
}

DecodeWorkerRef* WorkerPool::PickDecode() {
  return PickLeast(decode_, &decode_rr_,
                   [](const DecodeWorkerRef& w) { return int64_t{w.active.load()}; });
}

}  // namespace tandem
