// Sampling parameters and the sampler. Randomness comes from a counter-based generator
// (Philox4x32-10) keyed by (seed, position), so a token depends only on its logits, its
// parameters and its position — not on batch composition or which process samples it.
//
// Thread safety: free functions on values; safe to call concurrently.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

struct SamplingParams {
  // 0 means greedy (argmax; ties go to the lowest id). Default: 1.
  float temperature = 1.0f;
  // Keep the k most probable tokens; 0 disables. Default: 0.
  int32_t top_k = 0;
  // Keep the smallest set whose probability reaches top_p; 1 disables. Default: 1.
  float top_p = 1.0f;
  // Drop tokens whose probability is below min_p × the top probability; 0 disables. Default: 0.
  float min_p = 0.0f;
  // Hugging Face repetition penalty over prompt and generated tokens; 1 disables. Default: 1.
  float repetition_penalty = 1.0f;
  // OpenAI-style penalties over generated tokens; 0 disables. Default: 0.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // Key of the random generator. Default: 0.
  uint64_t seed = 0;
  // Number of most probable tokens (by raw model log-probability) to report; 0 = none. Max 20.
  int32_t top_logprobs = 0;

  // INVALID_ARGUMENT naming the field (message and Status::field()), e.g.
  // "top_p must be in (0, 1], got 1.5" with field "top_p".
  Status Validate() const;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

struct SampleResult {
  int32_t token = 0;
  // Raw model log-probability of `token` (log_softmax of the unprocessed logits).
  float logprob = 0.0f;
  // The `top_logprobs` most probable tokens by raw log-probability, most probable first.
  std::vector<TokenLogprob> top_logprobs;
};

// Samples the token at sequence position `position` (0-based index the token will occupy).
// `prompt` and `generated` are the sequence's ids so far (penalties read them).
SampleResult Sample(std::span<const float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> generated,
                    int64_t position);

// Philox4x32-10 uniform float in [0, 1) for (seed, counter, lane). Exposed for tests and
// for the GPU sampler, which must produce the same numbers.
float PhiloxUniform(uint64_t seed, uint64_t counter, uint32_t lane);

}  // namespace tandem
