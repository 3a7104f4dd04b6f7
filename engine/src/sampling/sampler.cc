// Sample(): the CPU sampler, and the specification the GPU sampler reproduces.
//
// Pipeline for one row of logits (n = vocabulary size), all in fp32, in this order:
//  1. x = copy of the logits.
//  2. Penalties on x (ApplyPenalties in logits_processing.h): repetition, then presence and
//     frequency.
//  3. temperature == 0: token = Argmax(x) (ties to the lowest id). No random number is drawn.
//  4. Otherwise x[i] = x[i] / temperature (a division, skipped when temperature == 1);
//     m = x[Argmax(x)]; if m is not finite (overflow, or every logit -inf) fall back to step 3.
//     Weights w[i] = expf(x[i] - m), Z = FixedOrderSum(w)  (softmax p[i] = w[i] / Z).
//  5. u = PhiloxUniform(seed, position, lane 0).
//  6. No filter enabled (top_k == 0 or >= n, top_p == 1, min_p == 0): walk ids 0, 1, ..., n-1
//     with cum += w[i] (left to right) and return the first i with w[i] > 0 and u * Z < cum.
//  7. Filters enabled: SelectTokens (token_filter.h) gives the kept ids in sampling order
//     (w descending, ties by lower id) after top-k, top-p, min-p. Renormalize:
//     mass = w of the kept ids summed left to right in that order; walk the kept ids in that
//     order with cum += w and return the first with u * mass < cum.
//  In 6 and 7, if rounding leaves u * total >= cum at the end, return the last walked id with
//  w > 0 (the first kept id if none has).
// Log-probabilities come from the raw logits l, before penalties and temperature:
//  M = l[Argmax(l)], logprob[i] = (l[i] - M) - logf(Z_raw), Z_raw = FixedOrderSum(expf(l - M)).
//  top_logprobs lists the top_logprobs largest raw logits (NaN skipped), most probable first,
//  ties by lower id.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

#include "logits_processing.h"
#include "tandem/engine/sampling.h"
#include "token_filter.h"

namespace tandem {
namespace {

using sampling_internal::Argmax;

// Per-thread buffers, grown to the largest vocabulary seen, so Sample() does not allocate in
// steady state (except the top_logprobs vector it returns).
struct Scratch {
  std::vector<float> x;
  std::vector<float> w;
  std::vector<int32_t> ids;
};

Scratch& ThreadScratch(size_t n) {
  thread_local Scratch s;
  if (s.x.size() < n) {
    s.x.resize(n);
    s.w.resize(n);
    s.ids.resize(n);
  }
  return s;
}

// Inverse CDF over ids[0, count) (or 0..n-1 when ids is null) as in steps 6 and 7 above.
int32_t WalkCdf(const float* w, const int32_t* ids, size_t count, float target) {
  float cum = 0.0f;
  int32_t last = -1;
  for (size_t j = 0; j < count; ++j) {
    const int32_t t = ids != nullptr ? ids[j] : static_cast<int32_t>(j);
    if (!(w[t] > 0.0f)) continue;
    cum += w[t];
    last = t;
    if (target < cum) return t;
  }
  if (last >= 0) return last;
  return ids != nullptr ? ids[0] : 0;
}

int32_t Draw(std::span<const float> w, float total, const SamplingParams& params, int64_t position,
             std::vector<int32_t>* ids) {
  const float u = PhiloxUniform(params.seed, static_cast<uint64_t>(position), 0);
  if (!sampling_internal::FiltersEnabled(params.top_k, params.top_p, params.min_p, w.size())) {
    return WalkCdf(w.data(), nullptr, w.size(), u * total);
  }
  const size_t kept =
      sampling_internal::SelectTokens(w, total, params.top_k, params.top_p, params.min_p, ids);
  float mass = 0.0f;
  for (size_t j = 0; j < kept; ++j) mass += w[(*ids)[j]];
  return WalkCdf(w.data(), ids->data(), kept, u * mass);
}

// The `count` largest raw logits, most probable first, ties by lower id; O(n * count).
std::vector<TokenLogprob> TopLogprobs(std::span<const float> logits, int32_t count, float max,
                                      float log_z) {
  std::vector<TokenLogprob> top;
  const size_t limit = std::min(static_cast<size_t>(std::max(count, 0)), logits.size());
  if (limit == 0) return top;
  top.reserve(limit + 1);
  for (size_t i = 0; i < logits.size(); ++i) {
    const float l = logits[i];
    if (std::isnan(l)) continue;
    // Strictly greater only: an equal logit has a higher id than everything already held.
    if (top.size() == limit && !(l > logits[top.back().token])) continue;
    size_t pos = top.size();
    while (pos > 0 && l > logits[top[pos - 1].token]) --pos;
    top.insert(top.begin() + pos, TokenLogprob{static_cast<int32_t>(i), 0.0f});
    if (top.size() > limit) top.pop_back();
  }
  for (TokenLogprob& t : top) t.logprob = (logits[t.token] - max) - log_z;
  return top;
}

}  // namespace

SampleResult Sample(std::span<const float> logits, const SamplingParams& params,
                    std::span<const int32_t> prompt, std::span<const int32_t> generated,
                    int64_t position) {
  assert(!logits.empty() && "Sample needs a non-empty vocabulary");
  assert(position >= 0 && "position is a 0-based index");
  const size_t n = logits.size();
  Scratch& s = ThreadScratch(n);
  std::span<float> x(s.x.data(), n);
  std::span<float> w(s.w.data(), n);
  std::copy(logits.begin(), logits.end(), x.begin());

  const bool penalized = sampling_internal::ApplyPenalties(x, params, prompt, generated);
  const float raw_max = logits[Argmax(logits)];
  float raw_z = 0.0f;
  bool have_raw_z = false;

  SampleResult result;
  if (params.temperature == 0.0f) {
    result.token = Argmax(x);
  } else {
    if (params.temperature != 1.0f) {
      for (float& v : x) v = v / params.temperature;
    }
    const float max = x[Argmax(x)];
    if (!std::isfinite(max)) {
      result.token = Argmax(x);
    } else {
      const float total = sampling_internal::SoftmaxWeights(x, max, w);
      if (!penalized && params.temperature == 1.0f) {  // x is bit-identical to the raw logits
        raw_z = total;
        have_raw_z = true;
      }
      result.token = Draw(w, total, params, position, &s.ids);
    }
  }

  if (!have_raw_z) raw_z = sampling_internal::SoftmaxDenominator(logits, raw_max);
  const float log_z = std::log(raw_z);
  result.logprob = (logits[result.token] - raw_max) - log_z;
  result.top_logprobs = TopLogprobs(logits, params.top_logprobs, raw_max, log_z);
  return result;
}

}  // namespace tandem
