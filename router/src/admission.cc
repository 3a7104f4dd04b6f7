#include "tandem/router/admission.h"

namespace tandem {

Status Admission::TryEnter() {
  int32_t n = in_flight_.load();
  while (n < capacity_) {
    if (in_flight_.compare_exchange_weak(n, n + 1)) {
      admitted_.fetch_add(1);
      return Status::Ok();
    }
  }
  return ResourceExhaustedError("admission queue is full ({} requests)", capacity_);
}

void Admission::Leave() { in_flight_.fetch_sub(1); }

}  // namespace tandem
