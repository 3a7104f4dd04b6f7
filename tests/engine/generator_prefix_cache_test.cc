// Generator with the engine's prefix cache: a request gives the same tokens with the cache cold,
// warm, or off (greedy and seeded sampling), reuses exactly the full cached blocks of its
// prompt (never its last token), and gives every page back.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

class GeneratorPrefixCacheTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::TempDir("generator_prefix"));
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    testing::WriteTinyModel(*dir_, spec);
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::unique_ptr<Engine> Load(bool prefix_cache, int64_t kv_bytes = 16 << 20) {
    EngineOptions eo;
    eo.kv_cache_bytes = kv_bytes;
    eo.prefix_cache = prefix_cache;
    auto e = Engine::Load(*dir_, eo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return std::move(e).value();
  }

  // Runs `reqs` together; the tokens of each, in request order.
  static std::vector<std::vector<int32_t>> Run(Engine& e,
                                               const std::vector<GenerationRequest>& reqs,
                                               GeneratorOptions opts = {}) {
    Generator g(e, opts);
    std::map<int64_t, size_t> which;
    for (size_t i = 0; i < reqs.size(); ++i) {
      auto h = g.Add(reqs[i]);
      EXPECT_TRUE(h.ok()) << h.status().ToString();
      which[*h] = i;
    }
    std::vector<std::vector<int32_t>> out(reqs.size());
    std::vector<TokenEvent> ev;
    while (g.HasWork()) {
      ev.clear();
      EXPECT_TRUE(g.Step(&ev).ok());
      for (const auto& x : ev) {
        if (x.finish != FinishReason::kCancelled) out[which[x.request]].push_back(x.token);
      }
    }
    return out;
  }

  static GenerationRequest Request(std::vector<int32_t> prompt, float temperature, uint64_t seed) {
    GenerationRequest r;
    r.prompt = std::move(prompt);
    r.max_tokens = 12;
    r.ignore_eos = true;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    return r;
  }

  static std::vector<int32_t> RandomTokens(std::mt19937& rng, int n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = 2 + static_cast<int32_t>(rng() % 298);
    return t;
  }

  static std::filesystem::path* dir_;
};

std::filesystem::path* GeneratorPrefixCacheTest::dir_ = nullptr;

TEST_F(GeneratorPrefixCacheTest, ColdWarmAndOffGiveTheSameTokens) {
  auto on = Load(true);
  auto off = Load(false);
  ASSERT_TRUE(on && off);
  EXPECT_EQ(off->prefix_cache(), nullptr);
  std::mt19937 rng(7);
  const auto shared = RandomTokens(rng, 53);  // three full blocks of 16, and 5 tokens
  for (float temperature : {0.0f, 0.8f}) {
    SCOPED_TRACE(temperature);
    ASSERT_EQ(on->prefix_cache()->EvictIdle() >= 0, true);
    auto prompt = shared;
    auto suffix = RandomTokens(rng, 9);
    prompt.insert(prompt.end(), suffix.begin(), suffix.end());
    const GenerationRequest req = Request(prompt, temperature, 42);
    const auto reference = Run(*off, {req});
    const PrefixCacheStats before = on->prefix_cache()->stats();
    const auto cold = Run(*on, {req});
    EXPECT_EQ(on->prefix_cache()->stats().hit_tokens, before.hit_tokens) << "cold: no hit";
    const auto warm = Run(*on, {req});
    const PrefixCacheStats after = on->prefix_cache()->stats();
    EXPECT_EQ(after.hit_tokens - before.hit_tokens, 48) << "62 tokens: three full blocks hit";
    EXPECT_EQ(after.lookup_tokens - before.lookup_tokens, 2 * 62);
    EXPECT_EQ(cold, reference);
    EXPECT_EQ(warm, reference);

    // Another suffix after the same prefix: the shared blocks hit, the tokens match cache-off.
    auto other = shared;
    auto suffix2 = RandomTokens(rng, 20);
    other.insert(other.end(), suffix2.begin(), suffix2.end());
    const GenerationRequest req2 = Request(other, temperature, 43);
    const int64_t hits = on->prefix_cache()->stats().hit_tokens;
    EXPECT_EQ(Run(*on, {req2}), Run(*off, {req2}));
    EXPECT_EQ(on->prefix_cache()->stats().hit_tokens - hits, 48);
  }
  EXPECT_EQ(on->kv_blocks_in_use(), 0);
  EXPECT_GT(on->prefix_cache()->stats().idle_blocks, 0);
}

TEST_F(GeneratorPrefixCacheTest, LastPromptTokenIsAlwaysComputed) {
  auto on = Load(true);
  auto off = Load(false);
  std::mt19937 rng(11);
  const GenerationRequest req = Request(RandomTokens(rng, 32), 0.0f, 1);  // two full blocks
  const auto reference = Run(*off, {req});
  EXPECT_EQ(Run(*on, {req}), reference);
  const int64_t hits = on->prefix_cache()->stats().hit_tokens;
  EXPECT_EQ(Run(*on, {req}), reference);
  EXPECT_EQ(on->prefix_cache()->stats().hit_tokens - hits, 16)
      << "the second block holds the last prompt token: recomputed";
  EXPECT_EQ(on->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPrefixCacheTest, BatchedChunkedAndEvictingStaysTokenExact) {
  // A small pool (every request fits, not all of them together, nor all their cached blocks)
  // with small chunks: requests share prefixes, wait for pages, evict each other's idle blocks.
  const int64_t block_bytes = [] {
    auto probe = Load(false);
    return static_cast<int64_t>(probe->kv_cache().geometry().BlockBytes());
  }();
  auto on = Load(true, 14 * block_bytes);
  auto off = Load(false, 14 * block_bytes);
  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> prefixes = {RandomTokens(rng, 40), RandomTokens(rng, 70)};
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 12; ++i) {
    auto p = prefixes[i % 2];
    auto s = RandomTokens(rng, 1 + static_cast<int>(rng() % 30));
    p.insert(p.end(), s.begin(), s.end());
    reqs.push_back(Request(p, i % 3 == 0 ? 0.0f : 0.9f, 100 + i));
  }
  GeneratorOptions opts;
  opts.max_batch_tokens = 40;
  opts.max_chunk_tokens = 13;
  const auto reference = Run(*off, reqs, opts);
  EXPECT_EQ(Run(*on, reqs, opts), reference);
  EXPECT_EQ(Run(*on, reqs, opts), reference) << "warm";
  const PrefixCacheStats s = on->prefix_cache()->stats();
  EXPECT_GT(s.hit_tokens, 0);
  EXPECT_GT(s.evictions, 0);
  EXPECT_EQ(on->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPrefixCacheTest, CancelGivesCachedBlocksBack) {
  auto on = Load(true);
  std::mt19937 rng(9);
  const GenerationRequest req = Request(RandomTokens(rng, 40), 0.0f, 1);
  Run(*on, {req});
  Generator g(*on, {});
  auto h = g.Add(req);
  ASSERT_TRUE(h.ok());
  std::vector<TokenEvent> ev;
  ASSERT_TRUE(g.Step(&ev).ok());  // admitted with two cached blocks, prefilled
  EXPECT_GT(on->kv_blocks_in_use(), 2);
  g.Cancel(*h);
  EXPECT_EQ(on->kv_blocks_in_use(), 0);
  while (g.HasWork()) ASSERT_TRUE(g.Step(&ev).ok());
}

}  // namespace
}  // namespace tandem
