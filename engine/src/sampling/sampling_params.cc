#include <cmath>

#include "tandem/engine/sampling.h"

namespace tandem {

Status SamplingParams::Validate() const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return InvalidArgumentError("temperature must be >= 0, got {}", temperature)
        .WithField("temperature");
  }
  if (top_k < 0)
    return InvalidArgumentError("top_k must be >= 0, got {}", top_k).WithField("top_k");
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return InvalidArgumentError("top_p must be in (0, 1], got {}", top_p).WithField("top_p");
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return InvalidArgumentError("min_p must be in [0, 1], got {}", min_p).WithField("min_p");
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return InvalidArgumentError("repetition_penalty must be > 0, got {}", repetition_penalty)
        .WithField("repetition_penalty");
  }
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) {
    return InvalidArgumentError("presence_penalty must be in [-2, 2], got {}", presence_penalty)
        .WithField("presence_penalty");
  }
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
    return InvalidArgumentError("frequency_penalty must be in [-2, 2], got {}", frequency_penalty)
        .WithField("frequency_penalty");
  }
  if (top_logprobs < 0 || top_logprobs > 20) {
    return InvalidArgumentError("top_logprobs must be in [0, 20], got {}", top_logprobs)
        .WithField("top_logprobs");
  }
  return Status::Ok();
}

}  // namespace tandem
