// Generator with on-demand pages: in a KV pool sized for 4 requests, 16 requests that run at
// once all complete, with the tokens they give in a pool where nothing is preempted (greedy
// and seeded sampling, prefix cache on and off), and every page comes back.
#include <gtest/gtest.h>

#include <map>
#include <random>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

constexpr int kPromptTokens = 40;
constexpr int kMaxTokens = 60;

class GeneratorPreemptionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::TempDir("generator_preemption"));
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    testing::WriteTinyModel(*dir_, spec);
  }
  static void TearDownTestSuite() { delete dir_; }

  // An engine whose KV pool holds `requests` requests of kPromptTokens + kMaxTokens tokens;
  // 0 = a roomy pool.
  static std::unique_ptr<Engine> Load(bool prefix_cache, int requests) {
    EngineOptions eo;
    eo.prefix_cache = prefix_cache;
    eo.kv_cache_bytes = int64_t{16} << 20;
    if (requests > 0) {
      auto probe = Engine::Load(*dir_, eo);
      EXPECT_TRUE(probe.ok()) << probe.status().ToString();
      const KvCache& kv = (*probe)->kv_cache();
      const int64_t block_bytes = eo.kv_cache_bytes / kv.allocator().num_blocks();
      eo.kv_cache_bytes = block_bytes * requests * kv.BlocksFor(kPromptTokens + kMaxTokens);
    }
    auto e = Engine::Load(*dir_, eo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return std::move(e).value();
  }

  static std::vector<GenerationRequest> Requests(int n) {
    std::mt19937 rng(7);
    std::vector<int32_t> shared(16);  // one full shared block, so the cache has hits
    for (auto& x : shared) x = 2 + static_cast<int32_t>(rng() % 298);
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < n; ++i) {
      GenerationRequest r;
      r.prompt = shared;
      while (r.prompt.size() < kPromptTokens) r.prompt.push_back(2 + rng() % 298);
      r.max_tokens = kMaxTokens;
      r.ignore_eos = true;
      r.sampling.temperature = i % 2 == 0 ? 0.0f : 0.8f;
      r.sampling.seed = 100 + i;
      reqs.push_back(std::move(r));
    }
    return reqs;
  }

  struct Outcome {
    std::vector<std::vector<int32_t>> tokens;
    int64_t preemptions = 0;
  };
  // Adds every request, then steps until all end; checks each ends exactly once.
  static Outcome Run(Engine& e, const std::vector<GenerationRequest>& reqs) {
    Generator g(e, GeneratorOptions{});
    std::map<int64_t, size_t> which;
    for (size_t i = 0; i < reqs.size(); ++i) {
      auto h = g.Add(reqs[i]);
      EXPECT_TRUE(h.ok()) << h.status().ToString();
      which[*h] = i;
    }
    Outcome out;
    out.tokens.resize(reqs.size());
    std::vector<int> finishes(reqs.size(), 0);
    std::vector<TokenEvent> ev;
    while (g.HasWork()) {
      ev.clear();
      Status st = g.Step(&ev);
      EXPECT_TRUE(st.ok()) << st.ToString();
      if (!st.ok()) break;
      for (const auto& x : ev) {
        out.tokens[which[x.request]].push_back(x.token);
        if (x.finish != FinishReason::kNone) {
          EXPECT_EQ(x.finish, FinishReason::kLength);
          ++finishes[which[x.request]];
        }
      }
    }
    for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(finishes[i], 1) << "request " << i;
    out.preemptions = g.num_preemptions();
    EXPECT_EQ(g.num_preempted_waiting(), 0);
    return out;
  }

  static std::filesystem::path* dir_;
};

std::filesystem::path* GeneratorPreemptionTest::dir_ = nullptr;

TEST_F(GeneratorPreemptionTest, SixteenRequestsInAPoolForFourAllCompleteTokenExact) {
  const auto reqs = Requests(16);
  auto roomy = Load(/*prefix_cache=*/false, 0);
  const Outcome reference = Run(*roomy, reqs);
  EXPECT_EQ(reference.preemptions, 0);
  for (const auto& t : reference.tokens) ASSERT_EQ(t.size(), size_t{kMaxTokens});

  for (bool prefix_cache : {false, true}) {
    SCOPED_TRACE(prefix_cache ? "prefix cache on" : "prefix cache off");
    auto tight = Load(prefix_cache, 4);
    const Outcome got = Run(*tight, reqs);
    EXPECT_GT(got.preemptions, 0) << "the pool for 4 must make 16 requests preempt";
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(got.tokens[i], reference.tokens[i]) << "request " << i;
    }
    EXPECT_EQ(tight->kv_blocks_in_use(), 0);
    if (!prefix_cache) {
      EXPECT_EQ(tight->kv_cache().allocator().num_free(),
                tight->kv_cache().allocator().num_blocks());
    }
  }
}

TEST_F(GeneratorPreemptionTest, APreemptedRequestCanBeCancelledAndGivesItsPagesBack) {
  auto tight = Load(/*prefix_cache=*/true, 2);
  const auto reqs = Requests(6);
  Generator g(*tight, GeneratorOptions{});
  std::vector<int64_t> handles;
  for (const auto& r : reqs) handles.push_back(*g.Add(r));
  std::vector<TokenEvent> ev;
  while (g.num_preempted_waiting() == 0 && g.HasWork()) {
    ASSERT_TRUE(g.Step(&ev).ok());
  }
  ASSERT_GT(g.num_preempted_waiting(), 0) << "2 pages' worth of requests never preempted";
  for (int64_t h : handles) g.Cancel(h);
  ev.clear();
  ASSERT_TRUE(g.Step(&ev).ok());
  EXPECT_FALSE(g.HasWork());
  std::map<int64_t, int> cancelled;
  for (const auto& x : ev) {
    if (x.finish == FinishReason::kCancelled) ++cancelled[x.request];
  }
  EXPECT_EQ(cancelled.size(), handles.size()) << "every request gets one cancel event";
  EXPECT_EQ(tight->kv_blocks_in_use(), 0);
}

TEST_F(GeneratorPreemptionTest, ARequestLargerThanThePoolIsRefused) {
  auto tight = Load(/*prefix_cache=*/false, 1);
  Generator g(*tight, GeneratorOptions{});
  GenerationRequest r = Requests(1).front();
  r.max_tokens = kMaxTokens + 32;  // more blocks than the whole pool
  auto h = g.Add(r);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kResourceExhausted) << h.status().ToString();
}

}  // namespace
}  // namespace tandem
