#include "token_filter.h"

#include <algorithm>
#include <bit>
#include <functional>

namespace tandem::sampling_internal {
namespace {

// Sort key of a token: w descending, then id ascending, as one integer compared descending.
// w >= 0 (expf never returns -0, NaN weights are zeroed), so its bit pattern orders like w.
using Key = uint64_t;
Key MakeKey(float w, size_t id) {
  return (static_cast<Key>(std::bit_cast<uint32_t>(w)) << 32) |
         (0xffffffffu - static_cast<uint32_t>(id));
}
int32_t KeyId(Key k) { return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(k)); }
constexpr std::greater<Key> kOrder;

std::vector<Key>& KeyScratch(size_t n) {
  thread_local std::vector<Key> keys;
  if (keys.size() < n) keys.resize(n);
  return keys;
}

// First j with w[ids[0]] + ... + w[ids[j]] >= threshold, plus one; `limit` if none.
size_t TopPCut(const float* w, const int32_t* ids, size_t limit, float threshold) {
  float cum = 0.0f;
  for (size_t j = 0; j < limit; ++j) {
    cum += w[ids[j]];
    if (cum >= threshold) return j + 1;
  }
  return limit;
}

// Number of leading ids (already in sampling order) with w >= min_p; at least one.
size_t MinPCut(const float* w, const int32_t* ids, size_t limit, float min_p) {
  while (limit > 1 && w[ids[limit - 1]] < min_p) --limit;
  return limit;
}

}  // namespace

bool FiltersEnabled(int32_t top_k, float top_p, float min_p, size_t n) {
  return (top_k > 0 && static_cast<size_t>(top_k) < n) || top_p < 1.0f || min_p > 0.0f;
}

size_t SelectTokens(std::span<const float> w, float total, int32_t top_k, float top_p, float min_p,
                    std::vector<int32_t>* ids) {
  const size_t n = w.size();
  if (ids->size() < n) ids->resize(n);
  int32_t* id = ids->data();
  Key* key = KeyScratch(n).data();

  if (top_k > 0 && static_cast<size_t>(top_k) < n) {
    const size_t k = static_cast<size_t>(top_k);
    for (size_t i = 0; i < n; ++i) key[i] = MakeKey(w[i], i);
    std::nth_element(key, key + k, key + n, kOrder);
    std::sort(key, key + k, kOrder);
    float mass = 0.0f;
    for (size_t j = 0; j < k; ++j) {
      id[j] = KeyId(key[j]);
      mass += w[id[j]];
    }
    // top-p on the full top-k list, then min-p trims its suffix; both cut a prefix of the
    // same order, so the kept count is the smaller of the two cuts.
    size_t kept = min_p > 0.0f ? MinPCut(w.data(), id, k, min_p) : k;
    if (top_p < 1.0f) kept = TopPCut(w.data(), id, kept, top_p * mass);
    return kept;
  }

  // No top-k: candidates are the tokens that survive min-p (the top-p cut over all tokens and
  // the min-p cut are prefixes of one order, so pre-filtering by min-p changes nothing).
  // min_p <= 1 and the top weight is 1, so at least one token survives.
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!(min_p > 0.0f) || w[i] >= min_p) key[count++] = MakeKey(w[i], i);
  }
  if (count == 0) {  // unreachable with a top weight of 1; keep the top token
    Key best = MakeKey(w[0], 0);
    for (size_t i = 1; i < n; ++i) best = std::max(best, MakeKey(w[i], i));
    key[0] = best;
    count = 1;
  }
  size_t kept = count;
  if (!(top_p < 1.0f)) {
    std::sort(key, key + count, kOrder);
  } else {
    // Grow the sorted prefix in chunks until the cumulative weight reaches the threshold.
    const float threshold = top_p * total;
    float cum = 0.0f;
    size_t sorted = 0;
    bool reached = false;
    for (size_t chunk = 128; sorted < count && !reached; chunk *= 4) {
      const size_t end = std::min(count, sorted + chunk);
      if (end < count) std::nth_element(key + sorted, key + end, key + count, kOrder);
      std::sort(key + sorted, key + end, kOrder);
      for (; sorted < end && !reached; ++sorted) {
        cum += std::bit_cast<float>(static_cast<uint32_t>(key[sorted] >> 32));
        reached = cum >= threshold;
      }
    }
    kept = sorted;  // one past the token that reached the threshold, or all of them
  }
  for (size_t j = 0; j < kept; ++j) id[j] = KeyId(key[j]);
  return kept;
}

}  // namespace tandem::sampling_internal
