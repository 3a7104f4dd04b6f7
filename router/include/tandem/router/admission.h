// Bounded admission: at most `capacity` Generate requests are in the router at once (waiting for
// or holding workers). Past it, new requests are refused with RESOURCE_EXHAUSTED rather than
// queued without bound.
//
// Thread safety: every method may be called concurrently.
#pragma once

#include <atomic>
#include <cstdint>

#include "tandem/common/status.h"

namespace tandem {

class Admission {
 public:
  explicit Admission(int32_t capacity) : capacity_(capacity) {}

  // Takes a slot, or RESOURCE_EXHAUSTED when all `capacity` are taken. Each OK is paired with
  // exactly one Leave().
  Status TryEnter();
  void Leave();

  int32_t in_flight() const { return in_flight_.load(); }
  // Slots taken since construction (tandem_requests_admitted_total).
  int64_t admitted() const { return admitted_.load(); }

 private:
  const int32_t capacity_;
  std::atomic<int32_t> in_flight_{0};
  std::atomic<int64_t> admitted_{0};
};

}  // namespace tandem
