// Top-k / top-p / min-p selection, private to tandem_sampling and exposed here for tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace tandem::sampling_internal {

// Whether any of top-k / top-p / min-p is enabled for a vocabulary of size n.
bool FiltersEnabled(int32_t top_k, float top_p, float min_p, size_t n);

// Selects the tokens kept by top-k, then top-p, then min-p, and returns how many were kept;
// (*ids)[0, kept) are their ids in sampling order. Never keeps fewer than one.
//
// Input: softmax weights w[i] = expf(s[i] - max s) (top weight exactly 1) and
// total = FixedOrderSum(w). Probabilities are p[i] = w[i] / total; the rules are stated on w,
// which orders and compares the same way without a division:
//  - Sampling order: w descending, ties by lower id (a strict total order, so the result does
//    not depend on the sort algorithm).
//  - top-k (0 < top_k < n): keep the first top_k tokens in sampling order. mass = their w
//    summed left to right in sampling order; without top-k, mass = total.
//  - top-p (top_p < 1), on the distribution renormalized over the top-k set (as Hugging Face):
//    cum_j = w of the first j+1 kept tokens summed left to right; keep the shortest prefix
//    with cum_j >= top_p * mass (fp32 product), or all of them if none reaches it.
//  - min-p (min_p > 0): drop w < min_p, i.e. p < min_p * p_max. Since w is descending this
//    trims a suffix and never the top token.
// Cost: O(n) + O(k log k) with top-k; top-p alone grows a sorted prefix by nth_element in
// chunks of 128, 512, 2048, ... so only the prefix it needs is sorted.
size_t SelectTokens(std::span<const float> w, float total, int32_t top_k, float top_p, float min_p,
                    std::vector<int32_t>* ids);

}  // namespace tandem::sampling_internal
