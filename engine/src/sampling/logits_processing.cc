#include "logits_processing.h"

#include <array>
#include <cmath>
#include <vector>

namespace tandem::sampling_internal {
namespace {

float NanToZero(float x) { return std::isnan(x) ? 0.0f : x; }

bool InRange(int32_t t, size_t n) { return t >= 0 && static_cast<size_t>(t) < n; }

// Per-thread zeroed scratch sized to the vocabulary; callers restore it to zero after use, so
// each call costs O(len(prompt) + len(generated)), not O(vocab).
template <typename T>
std::vector<T>& ZeroedScratch(size_t n) {
  thread_local std::vector<T> v;
  if (v.size() < n) v.resize(n, T{0});
  return v;
}

void ApplyRepetitionPenalty(std::span<float> logits, float p, std::span<const int32_t> prompt,
                            std::span<const int32_t> generated) {
  std::vector<uint8_t>& seen = ZeroedScratch<uint8_t>(logits.size());
  for (std::span<const int32_t> ids : {prompt, generated}) {
    for (int32_t t : ids) {
      if (!InRange(t, logits.size()) || seen[t]) continue;
      seen[t] = 1;
      const float l = logits[t];
      logits[t] = l > 0.0f ? l / p : l * p;
    }
  }
  for (std::span<const int32_t> ids : {prompt, generated}) {
    for (int32_t t : ids) {
      if (InRange(t, logits.size())) seen[t] = 0;
    }
  }
}

void ApplyPresenceFrequencyPenalties(std::span<float> logits, float presence, float frequency,
                                     std::span<const int32_t> generated) {
  std::vector<int32_t>& count = ZeroedScratch<int32_t>(logits.size());
  for (int32_t t : generated) {
    if (InRange(t, logits.size())) ++count[t];
  }
  for (int32_t t : generated) {
    if (!InRange(t, logits.size()) || count[t] == 0) continue;
    const float c = static_cast<float>(count[t]);
    logits[t] = logits[t] - (presence + frequency * c);
    count[t] = 0;  // applied once per distinct token; also restores the scratch to zero
  }
}

}  // namespace

bool ApplyPenalties(std::span<float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> generated) {
  bool enabled = false;
  if (params.repetition_penalty != 1.0f) {
    ApplyRepetitionPenalty(logits, params.repetition_penalty, prompt, generated);
    enabled = true;
  }
  if (params.presence_penalty != 0.0f || params.frequency_penalty != 0.0f) {
    ApplyPresenceFrequencyPenalties(logits, params.presence_penalty, params.frequency_penalty,
                                    generated);
    enabled = true;
  }
  return enabled;
}

float FixedOrderSum(std::span<const float> x) {
  std::array<float, kSumLanes> partial{};
  size_t i = 0;
  for (; i + kSumLanes <= x.size(); i += kSumLanes) {
    for (size_t j = 0; j < kSumLanes; ++j) partial[j] += x[i + j];
  }
  for (size_t j = 0; i + j < x.size(); ++j) partial[j] += x[i + j];
  float total = 0.0f;
  for (float p : partial) total += p;
  return total;
}

int32_t Argmax(std::span<const float> x) {
  int32_t best = -1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (best < 0 ? !std::isnan(x[i]) : x[i] > x[best]) best = static_cast<int32_t>(i);
  }
  return best < 0 ? 0 : best;
}

float SoftmaxWeights(std::span<const float> x, float max, std::span<float> w) {
  for (size_t i = 0; i < x.size(); ++i) w[i] = NanToZero(std::exp(x[i] - max));
  return FixedOrderSum(w.first(x.size()));
}

float SoftmaxDenominator(std::span<const float> x, float max) {
  std::array<float, kSumLanes> block;
  std::array<float, kSumLanes> partial{};
  size_t i = 0;
  for (; i + kSumLanes <= x.size(); i += kSumLanes) {
    for (size_t j = 0; j < kSumLanes; ++j) block[j] = NanToZero(std::exp(x[i + j] - max));
    for (size_t j = 0; j < kSumLanes; ++j) partial[j] += block[j];
  }
  for (size_t j = 0; i + j < x.size(); ++j) partial[j] += NanToZero(std::exp(x[i + j] - max));
  float total = 0.0f;
  for (float p : partial) total += p;
  return total;
}

}  // namespace tandem::sampling_internal
