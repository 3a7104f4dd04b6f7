// Validation of public Generate requests. Every error is INVALID_ARGUMENT with the offending
// field's path in Status::field() (tandem.v1 names, e.g. "stopping.max_tokens"), and its message
// starts with that path: "stopping.max_tokens must be >= 1, got 0". Sampling is checked by the
// workers' own code (tandem/worker/sampling_proto.h); unset proto fields take their documented
// defaults (top_p 0 = 1, repetition_penalty 0 = 1).
#pragma once

#include <cstdint>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/router/request_limits.h"
#include "tandem/v1/generate.pb.h"

namespace tandem {

// Checks what can be checked before tokenization: an input is present and non-empty, sampling
// values, stopping.max_tokens and top_logprobs.
Status ValidateGenerateRequest(const v1::GenerateRequest& request);

// Checks the request against `limits` (stop strings: count and length; stop token ids; prompt
// bytes; request_id length and characters). Both front ends call it before the request is
// tokenized; the HTTP API's prompts × n bound is the HTTP front end's own.
Status ValidateRequestBounds(const v1::GenerateRequest& request, const RequestLimits& limits);

// Checks the tokenized prompt: not empty, ids inside the vocabulary, and prompt + max_tokens
// within the model's context.
Status ValidatePrompt(const std::vector<int32_t>& prompt, int32_t max_tokens,
                      int64_t max_context_tokens, int32_t vocab_size);

// The sampling parameters with unset defaults filled in (top_p and repetition_penalty 0 → 1).
v1::SamplingParameters NormalizedSampling(const v1::SamplingParameters& sampling);

}  // namespace tandem
