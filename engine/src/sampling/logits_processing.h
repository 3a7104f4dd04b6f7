// Logit transforms used by Sample(), private to tandem_sampling and exposed here for tests.
// Each function states its exact fp32 formula and evaluation order: the GPU sampler
// reimplements them. The build is ISO C++ (-ffp-contract=off), so no multiply-add is fused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "tandem/engine/sampling.h"

namespace tandem::sampling_internal {

// Applies, in place and in this order:
//  1. Repetition penalty (Hugging Face), once per distinct token t in prompt ∪ generated:
//       logit[t] = logit[t] > 0 ? logit[t] / p : logit[t] * p        (p = repetition_penalty)
//  2. Presence / frequency penalties (OpenAI), once per distinct token t in generated, with
//     c = count of t in generated (as fp32):
//       logit[t] = logit[t] - (presence + frequency * c)
// Token ids outside [0, logits.size()) are ignored. A disabled penalty (1, 0, 0) is skipped.
// Returns whether any penalty was enabled (the logits may then differ from the input).
bool ApplyPenalties(std::span<float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> generated);

// Lanes of FixedOrderSum: a warp's width, so lane j of one warp can reproduce partial j.
inline constexpr size_t kSumLanes = 32;

// Sum in a fixed order independent of the caller: partial[j] = x[j] + x[j+32] + x[j+64] + ...
// (left to right, fp32), then total = ((partial[0] + partial[1]) + partial[2]) + ... + partial[31].
float FixedOrderSum(std::span<const float> x);

// Index of the largest value; ties go to the lowest id; NaN never wins. 0 if all are NaN.
// x[Argmax(x)] is the `max` the softmax functions below take.
int32_t Argmax(std::span<const float> x);

// Softmax weights: w[i] = expf(x[i] - max) with max = the largest non-NaN x (so the top weight
// is exactly 1), and 0 where that is NaN (a NaN logit is never sampled); returns
// Z = FixedOrderSum(w). Then p[i] = w[i] / Z. Requires a finite max.
float SoftmaxWeights(std::span<const float> x, float max, std::span<float> w);

// Same Z as SoftmaxWeights without storing the weights.
float SoftmaxDenominator(std::span<const float> x, float max);

}  // namespace tandem::sampling_internal
