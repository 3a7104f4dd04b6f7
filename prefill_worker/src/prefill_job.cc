#include "tandem/prefill_worker/prefill_job.h"

namespace tandem {

std::string_view PrefillStateName(PrefillState state) {
  switch (state) {
    case PrefillState::kQueued:
      return "queued";
    case PrefillState::kComputing:
      return "computing";
    case PrefillState::kTransferring:
      return "transferring";
    case PrefillState::kDone:
      return "done";
    case PrefillState::kFailed:
      return "failed";
    case PrefillState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

}  // namespace tandem
