// The one batch planner of the engine: the Generator (continuous batching) and the prefill
// worker's scheduler both lay out each step with PlanStep, so chunking rules live in one place.
//
// A step is decode rows first — every sequence whose prompt is in the cache and which has one
// token not yet computed — then prefill chunks of the other sequences in their order while the
// token budget lasts. Decode rows go into ForwardBatch::decode, apart from prefill chunks, so a
// GPU backend can replay a captured decode graph per batch-size bucket.
//
// Thread safety: pure function.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "tandem/engine/model_runner.h"

namespace tandem {

struct PlannerOptions {
  // Tokens of one step (decode rows + prefill chunk tokens); values < 1 act as 1. Default: 512.
  int32_t max_batch_tokens = 512;
  // Largest prefill chunk of one sequence per step; 0 = the whole budget. Default: 0.
  int32_t max_chunk_tokens = 0;
};

// What the planner needs to know of one running sequence (spans must outlive the plan).
struct SequenceView {
  std::span<const int32_t> tokens;  // every known token: prompt, then generated ones
  int64_t num_computed = 0;         // tokens whose K/V are in the cache
  int64_t prompt_len = 0;
  std::span<const int32_t> block_table;
};

struct StepPlan {
  ForwardBatch batch;
  // Sequence index of each decode row, in row order.
  std::vector<int32_t> decode_seqs;
  // One per prefill chunk, in chunk order: its sequence, how many prompt tokens it computes,
  // and whether it completes the prompt (then it wants logits).
  struct PrefillPart {
    int32_t seq = 0;
    int64_t count = 0;
    bool last = false;
  };
  std::vector<PrefillPart> prefill_parts;
};

StepPlan PlanStep(std::span<const SequenceView> seqs, const PlannerOptions& options);

}  // namespace tandem
