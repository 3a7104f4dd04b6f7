// DESIGN.md, Parity: a sequence's logits are bit-identical whether it runs alone or in a batch
// of 2–32 others, wherever it sits in the batch, and whatever the prefill chunk size.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

struct Seq {
  std::vector<int32_t> tokens;  // prompt then forced continuation
  int64_t prompt_len = 0;
  int64_t start_step = 0;  // joins the batch at this step
  std::vector<int32_t> blocks;
  int64_t computed = 0;
  std::vector<std::vector<float>> logits;  // one per scored position
};

// Steps every sequence together: each step a sequence adds a prefill chunk of `chunk` tokens
// (or the rest of its prompt) or one decode token; logits are kept for the last prompt
// position and every decode position.
void RunTogether(Engine& e, std::vector<Seq*> seqs, int64_t chunk) {
  KvCache& cache = e.kv_cache();
  for (Seq* s : seqs) {
    auto b = cache.allocator().Allocate(cache.BlocksFor(s->tokens.size()));
    ASSERT_TRUE(b.ok());
    s->blocks = *b;
  }
  for (int64_t step = 0;; ++step) {
    std::vector<ForwardChunk> chunks;
    std::vector<Seq*> owners;
    for (Seq* s : seqs) {
      if (step < s->start_step || s->computed >= static_cast<int64_t>(s->tokens.size())) continue;
      int64_t n = 1;
      if (s->computed < s->prompt_len) n = std::min(chunk, s->prompt_len - s->computed);
      ForwardChunk ch;
      ch.tokens = std::span<const int32_t>(s->tokens).subspan(s->computed, n);
      ch.start_pos = s->computed;
      ch.block_table = s->blocks;
      ch.want_logits = s->computed + n >= s->prompt_len;
      chunks.push_back(ch);
      owners.push_back(s);
    }
    if (chunks.empty()) {
      bool all_done = true;
      for (Seq* s : seqs) all_done &= s->computed >= static_cast<int64_t>(s->tokens.size());
      if (all_done) break;
      continue;
    }
    std::vector<float> logits;
    ASSERT_TRUE(e.runner().Forward(chunks, cache, &logits).ok());
    const int32_t v = e.config().vocab_size;
    size_t row = 0;
    for (size_t c = 0; c < chunks.size(); ++c) {
      owners[c]->computed += chunks[c].tokens.size();
      if (!chunks[c].want_logits) continue;
      owners[c]->logits.emplace_back(logits.begin() + row * v, logits.begin() + (row + 1) * v);
      ++row;
    }
  }
  for (Seq* s : seqs) cache.allocator().Release(s->blocks);
}

Seq MakeSeq(std::mt19937& rng, int32_t vocab, int64_t prompt_len, int64_t gen) {
  Seq s;
  std::uniform_int_distribution<int32_t> tok(0, vocab - 1);
  for (int64_t i = 0; i < prompt_len + gen; ++i) s.tokens.push_back(tok(rng));
  s.prompt_len = prompt_len;
  return s;
}

// (architecture, weight storage)
class BatchInvarianceTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {
};

TEST_P(BatchInvarianceTest, LogitsBitIdenticalAloneBatchedAndChunked) {
  const std::string arch = std::get<0>(GetParam()), weights = std::get<1>(GetParam());
  auto dir = testing::TempDir("invariance_" + arch);
  testing::TinyModelSpec spec;
  spec.arch = arch;
  spec.hidden = 128;
  spec.intermediate = 352;
  spec.heads = 4;
  spec.kv_heads = 2;
  spec.vocab = 512;
  spec.layers = 2;
  spec.qkv_bias = arch == "Qwen2ForCausalLM";
  spec.sliding_window = arch == "MistralForCausalLM" ? 12 : 0;
  testing::WriteTinyModel(dir, spec);
  EngineOptions eo;
  eo.kv_cache_bytes = 64 << 20;
  eo.weights = *ParseDType(weights);
  auto engine = Engine::Load(dir, eo);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  Engine& e = **engine;
  std::mt19937 rng(42);

  const Seq target = MakeSeq(rng, spec.vocab, 37, 12);
  Seq alone = target;
  RunTogether(e, {&alone}, 1 << 20);
  ASSERT_EQ(alone.logits.size(), 13u);

  auto expect_same = [&](const Seq& got, const std::string& what) {
    ASSERT_EQ(got.logits.size(), alone.logits.size()) << what;
    for (size_t i = 0; i < got.logits.size(); ++i) {
      ASSERT_EQ(0, std::memcmp(got.logits[i].data(), alone.logits[i].data(),
                               got.logits[i].size() * sizeof(float)))
          << what << ": logits differ at scored position " << i;
    }
  };
  for (int64_t chunk : {1, 3, 7, 16}) {
    Seq s = target;
    RunTogether(e, {&s}, chunk);
    expect_same(s, "alone, chunk " + std::to_string(chunk));
  }
  for (int others : {2, 5, 13, 32}) {
    for (int64_t chunk : {5, 64}) {
      std::vector<Seq> pool;
      for (int i = 0; i < others; ++i) {
        pool.push_back(MakeSeq(rng, spec.vocab, 1 + rng() % 50, 1 + rng() % 10));
        pool.back().start_step = rng() % 6;
      }
      Seq s = target;
      s.start_step = others % 3;
      std::vector<Seq*> batch;
      for (auto& p : pool) batch.push_back(&p);
      batch.insert(batch.begin() + (others * 7) % (others + 1), &s);
      RunTogether(e, batch, chunk);
      expect_same(s, "with " + std::to_string(others) + " others, chunk " + std::to_string(chunk));
    }
  }
  EXPECT_EQ(e.kv_cache().allocator().num_used(), 0);
}

INSTANTIATE_TEST_SUITE_P(
    ArchitecturesAndWeights, BatchInvarianceTest,
    ::testing::Combine(::testing::Values("LlamaForCausalLM", "MistralForCausalLM",
                                         "Qwen2ForCausalLM"),
                       ::testing::Values("f32", "bf16", "q8_0", "q4_0", "q4_1")),
    [](const auto& info) {
      return std::get<0>(info.param).substr(0, 5) + "_" + std::get<1>(info.param);
    });

// The whole generation loop: seeded sampling gives each request the same tokens alone and
// among 31 others, with any token budget.
TEST(GeneratorTest, SampledTokensDoNotDependOnBatch) {
  auto dir = testing::TempDir("generator");
  testing::TinyModelSpec spec;
  spec.vocab = 300;
  testing::WriteTinyModel(dir, spec);
  EngineOptions eo;
  eo.kv_cache_bytes = 64 << 20;
  auto engine = Engine::Load(dir, eo);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  std::mt19937 rng(3);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 32; ++i) {
    GenerationRequest r;
    for (int t = 0, n = 1 + rng() % 40; t < n; ++t) r.prompt.push_back(2 + rng() % 298);
    r.max_tokens = 1 + rng() % 20;
    r.ignore_eos = i % 2 == 0;
    r.sampling.temperature = i % 3 == 0 ? 0.0f : 0.9f;
    r.sampling.top_k = i % 4 == 1 ? 20 : 0;
    r.sampling.top_p = i % 5 == 2 ? 0.8f : 1.0f;
    r.sampling.seed = 1000 + i;
    reqs.push_back(r);
  }
  auto run = [&](const std::vector<int>& which, GeneratorOptions opts) {
    Generator g(**engine, opts);
    std::map<int64_t, int> handle_to_req;
    for (int i : which) handle_to_req[*g.Add(reqs[i])] = i;
    std::map<int, std::vector<int32_t>> out;
    std::vector<TokenEvent> ev;
    while (g.HasWork()) {
      ev.clear();
      EXPECT_TRUE(g.Step(&ev).ok());
      for (auto& x : ev) out[handle_to_req[x.request]].push_back(x.token);
    }
    return out;
  };
  std::vector<int> all(32);
  for (int i = 0; i < 32; ++i) all[i] = i;
  GeneratorOptions tight;
  tight.max_batch_tokens = 17;
  tight.max_running = 9;
  auto together = run(all, GeneratorOptions{});
  auto squeezed = run(all, tight);
  for (int i = 0; i < 32; ++i) {
    auto alone = run({i}, GeneratorOptions{});
    EXPECT_EQ(alone[i], together[i]) << "request " << i;
    EXPECT_EQ(alone[i], squeezed[i]) << "request " << i;
    EXPECT_LE(alone[i].size(), size_t(reqs[i].max_tokens));
  }
  EXPECT_EQ((*engine)->kv_blocks_in_use(), 0);
}

}  // namespace
}  // namespace tandem
