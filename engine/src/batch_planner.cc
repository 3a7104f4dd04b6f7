#include "tandem/engine/batch_planner.h"

#include <algorithm>

namespace tandem {

StepPlan PlanStep(std::span<const SequenceView> seqs, const PlannerOptions& options) {
  StepPlan plan;
  int64_t budget = std::max(1, options.max_batch_tokens);
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SequenceView& s = seqs[i];
    if (s.num_computed < s.prompt_len) continue;
    if (static_cast<int64_t>(s.tokens.size()) != s.num_computed + 1) continue;
    ForwardChunk ch;
    ch.tokens = s.tokens.subspan(s.num_computed, 1);
    ch.start_pos = s.num_computed;
    ch.block_table = s.block_table;
    ch.want_logits = true;
    plan.batch.decode.push_back(ch);
    plan.decode_seqs.push_back(static_cast<int32_t>(i));
    --budget;
  }
  for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
    const SequenceView& s = seqs[i];
    if (s.num_computed >= s.prompt_len) continue;
    const int64_t remaining = s.prompt_len - s.num_computed;
    int64_t n = std::min(remaining, budget);
    if (options.max_chunk_tokens > 0) n = std::min<int64_t>(n, options.max_chunk_tokens);
    ForwardChunk ch;
    ch.tokens = s.tokens.subspan(s.num_computed, n);
    ch.start_pos = s.num_computed;
    ch.block_table = s.block_table;
    ch.want_logits = n == remaining;
    plan.batch.prefill.push_back(ch);
    plan.prefill_parts.push_back({static_cast<int32_t>(i), n, n == remaining});
    budget -= n;
  }
  return plan;
}

}  // namespace tandem
