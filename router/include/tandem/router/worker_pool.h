// The prefill and decode workers this router sends work to, with the load it tracks locally:
// decode workers are chosen by fewest active requests (round robin on ties), prefill workers by
// fewest queued prompt tokens (round robin on ties).
//
// Thread safety: every method may be called concurrently. Workers are fixed at construction;
// returned pointers stay valid for the pool's lifetime.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "tandem/v1/internal.grpc.pb.h"

namespace tandem {

struct PrefillWorkerRef {
  std::string address;
  std::unique_ptr<v1::PrefillWorker::Stub> stub;
  // Prompt tokens sent and not yet answered.
  std::atomic<int64_t> queued_tokens{0};
};

struct DecodeWorkerRef {
  std::string address;
  std::unique_ptr<v1::DecodeWorker::Stub> stub;
  // Requests reserved or decoding.
  std::atomic<int32_t> active{0};
};

class WorkerPool {
 public:
  // One insecure channel per address.
  WorkerPool(const std::vector<std::string>& prefill_addresses,
             const std::vector<std::string>& decode_addresses);

  // nullptr when there is no worker of that role.
  PrefillWorkerRef* PickPrefill();
  DecodeWorkerRef* PickDecode();

  int32_t num_prefill() const { return static_cast<int32_t>(prefill_.size()); }
  int32_t num_decode() const { return static_cast<int32_t>(decode_.size()); }

 private:
  std::vector<std::unique_ptr<PrefillWorkerRef>> prefill_;
  std::vector<std::unique_ptr<DecodeWorkerRef>> decode_;
  std::atomic<uint64_t> prefill_rr_{0};
  std::atomic<uint64_t> decode_rr_{0};
};

}  // namespace tandem
