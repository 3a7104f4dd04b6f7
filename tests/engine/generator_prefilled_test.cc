// Generator::AddPrefilled: a request whose prompt K/V and first token come from elsewhere
// (a prefill worker) generates exactly the tokens Generator::Add gives it.
#include <map>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

class GeneratorPrefilledTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = testing::TempDir("generator_prefilled");
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    testing::WriteTinyModel(dir, spec);
    EngineOptions eo;
    eo.kv_cache_bytes = 32 << 20;
    auto engine = Engine::Load(dir, eo);
    ASSERT_TRUE(engine.ok()) << engine.status().ToString();
    engine_ = std::move(engine).value();
  }

  std::vector<GenerationRequest> MakeRequests(int n) {
    std::mt19937 rng(11);
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < n; ++i) {
      GenerationRequest r;
      for (int t = 0, len = 1 + rng() % 40; t < len; ++t) r.prompt.push_back(2 + rng() % 298);
      r.max_tokens = 1 + rng() % 20;
      r.ignore_eos = i % 2 == 0;
      r.sampling.temperature = i % 3 == 0 ? 0.0f : 0.9f;
      r.sampling.top_k = i % 4 == 1 ? 20 : 0;
      r.sampling.repetition_penalty = i % 5 == 3 ? 1.3f : 1.0f;
      r.sampling.seed = 500 + i;
      reqs.push_back(r);
    }
    reqs[0].max_tokens = 1;  // first token finishes by length
    return reqs;
  }

  // Tokens of every request through Generator::Add.
  std::map<int, std::vector<int32_t>> RunAdd(const std::vector<GenerationRequest>& reqs) {
    Generator g(*engine_, GeneratorOptions{});
    std::map<int64_t, int> which;
    for (size_t i = 0; i < reqs.size(); ++i) which[*g.Add(reqs[i])] = static_cast<int>(i);
    return Drain(g, which);
  }

  // Prefills a request's prompt into fresh blocks and samples its first token, as the prefill
  // worker does.
  // With `generated` (a request resumed after a failover): prefills prompt + generated and
  // samples the token after them, counting them as generated, as a prefill worker does then.
  std::pair<std::vector<int32_t>, int32_t> Prefill(const GenerationRequest& r,
                                                   const std::vector<int32_t>& generated = {}) {
    KvCache& cache = engine_->kv_cache();
    // The prompt's blocks only, as a decode worker reserves them: the generator takes the
    // blocks of generated tokens as they come.
    const int64_t total = static_cast<int64_t>(r.prompt.size() + generated.size());
    auto blocks = cache.allocator().Allocate(cache.BlocksFor(total));
    EXPECT_TRUE(blocks.ok());
    std::vector<int32_t> sequence = r.prompt;
    sequence.insert(sequence.end(), generated.begin(), generated.end());
    ForwardChunk ch;
    ch.tokens = sequence;
    ch.start_pos = 0;
    ch.block_table = *blocks;
    ch.want_logits = true;
    std::vector<float> logits;
    int layers_done = 0;
    EXPECT_TRUE(engine_->runner()
                    .Forward(std::span<const ForwardChunk>(&ch, 1), cache, &logits,
                             [&](int32_t) { ++layers_done; })
                    .ok());
    EXPECT_EQ(layers_done, engine_->config().num_layers);
    SampleResult first =
        Sample(logits, r.sampling, r.prompt, generated, static_cast<int64_t>(ch.tokens.size()));
    return {*blocks, first.token};
  }

  static std::map<int, std::vector<int32_t>> Drain(Generator& g,
                                                   const std::map<int64_t, int>& which) {
    std::map<int, std::vector<int32_t>> out;
    std::vector<TokenEvent> ev;
    for (int steps = 0; g.HasWork() && steps < 10000; ++steps) {
      ev.clear();
      EXPECT_TRUE(g.Step(&ev).ok());
      for (auto& x : ev) {
        if (x.finish != FinishReason::kCancelled) out[which.at(x.request)].push_back(x.token);
      }
    }
    EXPECT_FALSE(g.HasWork());
    return out;
  }

  std::unique_ptr<Engine> engine_;
};

TEST_F(GeneratorPrefilledTest, SameTokensAsAddGreedyAndSeeded) {
  auto reqs = MakeRequests(12);
  auto expected = RunAdd(reqs);
  ASSERT_EQ(engine_->kv_blocks_in_use(), 0);

  Generator g(*engine_, GeneratorOptions{});
  std::map<int64_t, int> which;
  for (size_t i = 0; i < reqs.size(); ++i) {
    auto [blocks, first] = Prefill(reqs[i]);
    auto h = g.AddPrefilled(reqs[i], blocks, first);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    which[*h] = static_cast<int>(i);
  }
  auto got = Drain(g, which);
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(got[i], expected[i]) << "request " << i;
    EXPECT_FALSE(got[i].empty());
  }
  EXPECT_EQ(got[0].size(), 1u);
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPrefilledTest, MixedWithAddAndFirstTokenEventComesFirst) {
  auto reqs = MakeRequests(6);
  auto expected = RunAdd(reqs);
  Generator g(*engine_, GeneratorOptions{});
  std::map<int64_t, int> which;
  int64_t prefilled_handle = -1;
  int32_t first_token = -1;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (i % 2 == 1) {
      auto [blocks, first] = Prefill(reqs[i]);
      auto h = g.AddPrefilled(reqs[i], blocks, first);
      ASSERT_TRUE(h.ok());
      which[*h] = static_cast<int>(i);
      prefilled_handle = *h;
      first_token = first;
    } else {
      which[*g.Add(reqs[i])] = static_cast<int>(i);
    }
  }
  std::vector<TokenEvent> ev;
  ASSERT_TRUE(g.Step(&ev).ok());
  bool saw_first = false;
  for (auto& e : ev) {
    if (e.request == prefilled_handle && !saw_first) {
      saw_first = true;
      EXPECT_EQ(e.token, first_token);
    }
  }
  EXPECT_TRUE(saw_first);
  std::map<int, std::vector<int32_t>> got;
  for (auto& e : ev) got[which.at(e.request)].push_back(e.token);
  auto rest = Drain(g, which);
  for (auto& [i, toks] : rest) got[i].insert(got[i].end(), toks.begin(), toks.end());
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(got[i], expected[i]) << "request " << i;
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPrefilledTest, CancelReleasesBlocksWaitingOrRunning) {
  auto reqs = MakeRequests(3);
  reqs[1].max_tokens = 30;
  reqs[1].ignore_eos = true;
  Generator g(*engine_, GeneratorOptions{});
  auto [b0, f0] = Prefill(reqs[1]);
  auto [b1, f1] = Prefill(reqs[1]);
  auto h0 = g.AddPrefilled(reqs[1], b0, f0);
  auto h1 = g.AddPrefilled(reqs[1], b1, f1);
  ASSERT_TRUE(h0.ok() && h1.ok());
  g.Cancel(*h0);  // still waiting
  std::vector<TokenEvent> ev;
  ASSERT_TRUE(g.Step(&ev).ok());
  g.Cancel(*h1);  // running
  int cancelled = 0;
  for (int i = 0; i < 5 && g.HasWork(); ++i) {
    ASSERT_TRUE(g.Step(&ev).ok());
  }
  for (auto& e : ev) cancelled += e.finish == FinishReason::kCancelled;
  EXPECT_EQ(cancelled, 2);
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);
}

// A request resumed after k of its tokens (prompt + those k prefilled again, `generated` set)
// continues with exactly the tokens it would have produced: sampling is keyed by position and
// the penalties count the k tokens as generated.
TEST_F(GeneratorPrefilledTest, ResumedAfterSomeTokensContinuesWithTheSameTokens) {
  auto reqs = MakeRequests(12);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].ignore_eos = true;
    reqs[i].max_tokens = 6 + static_cast<int32_t>(i);
    if (i % 3 == 1) reqs[i].sampling.frequency_penalty = 0.7f;
    if (i % 3 == 2) reqs[i].sampling.presence_penalty = 0.5f;
  }
  auto expected = RunAdd(reqs);
  Generator g(*engine_, GeneratorOptions{});
  std::map<int64_t, int> which;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& want = expected[static_cast<int>(i)];
    ASSERT_EQ(want.size(), static_cast<size_t>(reqs[i].max_tokens));
    const size_t k = 1 + i % (want.size() - 1);  // 1 .. max_tokens - 1 already streamed
    GenerationRequest resumed = reqs[i];
    resumed.generated.assign(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(k));
    auto [blocks, next] = Prefill(reqs[i], resumed.generated);
    EXPECT_EQ(next, want[k]) << "request " << i << " resumed after " << k;
    auto h = g.AddPrefilled(resumed, blocks, next);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    which[*h] = static_cast<int>(i);
  }
  auto got = Drain(g, which);
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& want = expected[static_cast<int>(i)];
    const size_t k = 1 + i % (want.size() - 1);
    EXPECT_EQ(got[static_cast<int>(i)],
              std::vector<int32_t>(want.begin() + static_cast<std::ptrdiff_t>(k), want.end()))
        << "request " << i;
  }
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);

  // Refused: as many generated tokens as max_tokens, and generated tokens on Add.
  auto [blocks, first] = Prefill(reqs[3]);
  GenerationRequest full = reqs[3];
  full.generated.assign(static_cast<size_t>(full.max_tokens), 5);
  EXPECT_EQ(g.AddPrefilled(full, blocks, first).status().code(), StatusCode::kInvalidArgument);
  full.generated.resize(1);
  EXPECT_EQ(g.Add(full).status().code(), StatusCode::kInvalidArgument);
  engine_->kv_cache().allocator().Release(blocks);
}

TEST_F(GeneratorPrefilledTest, ValidationLeavesBlocksWithCaller) {
  auto reqs = MakeRequests(2);
  Generator g(*engine_, GeneratorOptions{});
  auto [blocks, first] = Prefill(reqs[1]);
  auto bad = g.AddPrefilled(reqs[1], blocks, 100000);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  std::vector<int32_t> too_few(blocks.begin(), blocks.end() - 1);
  bad = g.AddPrefilled(reqs[1], too_few, first);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  GenerationRequest empty = reqs[1];
  empty.prompt.clear();
  bad = g.AddPrefilled(empty, blocks, first);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(g.HasWork());
  engine_->kv_cache().allocator().Release(blocks);
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPrefilledTest, DestructorReleasesPrefilledBlocks) {
  auto reqs = MakeRequests(2);
  {
    Generator g(*engine_, GeneratorOptions{});
    auto [blocks, first] = Prefill(reqs[1]);
    ASSERT_TRUE(g.AddPrefilled(reqs[1], blocks, first).ok());
  }
  EXPECT_EQ(engine_->kv_blocks_in_use(), 0);
}

}  // namespace
}  // namespace tandem
