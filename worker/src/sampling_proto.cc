#include "tandem/worker/sampling_proto.h"

namespace tandem {

SamplingParams FromProto(const v1::SamplingParameters& p) {
  SamplingParams s;
  s.temperature = p.temperature();
  s.top_k = p.top_k();
  s.top_p = p.top_p() == 0.0f ? 1.0f : p.top_p();
  s.min_p = p.min_p();
  s.repetition_penalty = p.repetition_penalty() == 0.0f ? 1.0f : p.repetition_penalty();
  s.presence_penalty = p.presence_penalty();
  s.frequency_penalty = p.frequency_penalty();
  s.seed = p.seed();
  return s;
}

StatusOr<SamplingParams> SamplingForRequest(const v1::SamplingParameters& sampling, bool logprobs,
                                            int32_t top_logprobs) {
  if (top_logprobs < 0 || top_logprobs > 20) {
    return InvalidArgumentError("top_logprobs must be in [0, 20], got {}", top_logprobs)
        .WithField("top_logprobs");
  }
  SamplingParams s = FromProto(sampling);
  s.top_logprobs = logprobs ? top_logprobs : 0;
  if (Status st = s.Validate(); !st.ok()) {
    return InvalidArgumentError("sampling.{}", st.message()).WithField("sampling." + st.field());
  }
  return s;
}

}  // namespace tandem
