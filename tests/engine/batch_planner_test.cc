// The one batch planner (tandem/engine/batch_planner.h): decode rows apart from prefill chunks,
// the token budget, chunk caps and which chunk wants logits.
#include "tandem/engine/batch_planner.h"

#include <gtest/gtest.h>

namespace tandem {
namespace {

struct Seq {
  std::vector<int32_t> tokens;
  int64_t computed = 0;
  int64_t prompt = 0;
  std::vector<int32_t> blocks = {0, 1, 2, 3, 4, 5, 6, 7};
  SequenceView View() const { return {tokens, computed, prompt, blocks}; }
};

Seq Prefilling(int64_t prompt, int64_t computed) {
  return {std::vector<int32_t>(prompt, 7), computed, prompt};
}

Seq Decoding(int64_t prompt, int64_t generated) {
  // Every token but the last generated one is in the cache.
  return {std::vector<int32_t>(prompt + generated, 7), prompt + generated - 1, prompt};
}

TEST(BatchPlannerTest, DecodeRowsFirstThenPrefillUnderTheBudget) {
  const std::vector<Seq> seqs = {Prefilling(100, 0), Decoding(10, 3), Prefilling(50, 20),
                                 Decoding(5, 1)};
  std::vector<SequenceView> views;
  for (const Seq& s : seqs) views.push_back(s.View());
  PlannerOptions o;
  o.max_batch_tokens = 64;
  const StepPlan plan = PlanStep(views, o);
  ASSERT_EQ(plan.batch.decode.size(), 2u);
  EXPECT_EQ(plan.decode_seqs, (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(plan.batch.decode[0].start_pos, 12);
  EXPECT_EQ(plan.batch.decode[0].tokens.size(), 1u);
  EXPECT_TRUE(plan.batch.decode[0].want_logits);
  // 62 tokens left: all of them to the first prompt, none to the second.
  ASSERT_EQ(plan.prefill_parts.size(), 1u);
  EXPECT_EQ(plan.prefill_parts[0].seq, 0);
  EXPECT_EQ(plan.prefill_parts[0].count, 62);
  EXPECT_FALSE(plan.prefill_parts[0].last);
  EXPECT_FALSE(plan.batch.prefill[0].want_logits);
  EXPECT_EQ(plan.batch.NumTokens(), 64);
  EXPECT_EQ(plan.batch.NumLogitRows(), 2);
}

TEST(BatchPlannerTest, ChunkCapAndLastChunkWantsLogits) {
  const std::vector<Seq> seqs = {Prefilling(40, 30), Prefilling(40, 0)};
  std::vector<SequenceView> views;
  for (const Seq& s : seqs) views.push_back(s.View());
  PlannerOptions o;
  o.max_batch_tokens = 512;
  o.max_chunk_tokens = 16;
  const StepPlan plan = PlanStep(views, o);
  ASSERT_EQ(plan.prefill_parts.size(), 2u);
  EXPECT_EQ(plan.prefill_parts[0].count, 10);
  EXPECT_TRUE(plan.prefill_parts[0].last);
  EXPECT_TRUE(plan.batch.prefill[0].want_logits);
  EXPECT_EQ(plan.batch.prefill[0].start_pos, 30);
  EXPECT_EQ(plan.prefill_parts[1].count, 16);
  EXPECT_FALSE(plan.prefill_parts[1].last);
  EXPECT_TRUE(plan.batch.decode.empty());
}

TEST(BatchPlannerTest, ABudgetBelowOneStillMakesProgress) {
  const std::vector<Seq> seqs = {Prefilling(5, 0)};
  const std::vector<SequenceView> views = {seqs[0].View()};
  PlannerOptions o;
  o.max_batch_tokens = 0;
  const StepPlan plan = PlanStep(views, o);
  ASSERT_EQ(plan.prefill_parts.size(), 1u);
  EXPECT_EQ(plan.prefill_parts[0].count, 1);
}

TEST(BatchPlannerTest, NothingToDoGivesAnEmptyBatch) {
  // Prompt computed and no new token yet (its first token not sampled): nothing to run.
  Seq s = Prefilling(8, 8);
  const std::vector<SequenceView> views = {s.View()};
  const StepPlan plan = PlanStep(views, PlannerOptions{});
  EXPECT_TRUE(plan.batch.empty());
}

}  // namespace
}  // namespace tandem
