// The backend seam (tandem/engine/model_runner.h) as the CPU backend implements it: decode rows
// planned apart from prefill chunks give the same logits as one mixed batch, the per-layer
// "K/V written" signal, backend sampling, page pools and the errors that name the problem.
#include "tandem/engine/model_runner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

class ModelRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("model_runner");
    testing::TinyModelSpec spec;
    spec.hidden = 64;
    spec.intermediate = 96;
    spec.heads = 4;
    spec.kv_heads = 2;
    spec.vocab = 256;
    spec.layers = 3;
    testing::WriteTinyModel(dir_, spec);
    EngineOptions eo;
    eo.kv_cache_bytes = 8 << 20;
    auto e = Engine::Load(dir_, eo);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    engine_ = std::move(e).value();
  }

  std::vector<int32_t> Blocks(int64_t tokens) {
    auto b = engine_->kv_cache().allocator().Allocate(engine_->kv_cache().BlocksFor(tokens));
    EXPECT_TRUE(b.ok());
    return *b;
  }

  std::filesystem::path dir_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(ModelRunnerTest, DecodeRowsApartGiveTheSameLogitsAsOneMixedBatch) {
  ModelRunner& r = engine_->runner();
  KvCache& cache = engine_->kv_cache();
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> toks(3);
  std::vector<std::vector<int32_t>> blocks(3);
  for (int s = 0; s < 3; ++s) {
    for (int i = 0; i < 20; ++i) toks[s].push_back(rng() % 256);
    blocks[s] = Blocks(20);
  }
  // Prompts of 19 tokens for sequences 0 and 1; sequence 2 prefills later.
  for (int s = 0; s < 2; ++s) {
    std::vector<float> l;
    ForwardChunk ch{std::span<const int32_t>(toks[s]).first(19), 0, blocks[s], true};
    ASSERT_TRUE(r.Forward({&ch, 1}, cache, &l).ok());
  }
  // Step A: decode rows of 0 and 1 in ForwardBatch::decode plus a prefill chunk of 2.
  ForwardBatch planned;
  for (int s = 0; s < 2; ++s) {
    planned.decode.push_back(
        {std::span<const int32_t>(toks[s]).subspan(19, 1), 19, blocks[s], true});
  }
  planned.prefill.push_back({std::span<const int32_t>(toks[2]).first(12), 0, blocks[2], true});
  ASSERT_EQ(planned.NumLogitRows(), 3);
  ASSERT_TRUE(r.Forward(planned, cache).ok());
  std::vector<float> a;
  ASSERT_TRUE(r.CopyLogits(&a).ok());
  // Step B: the same chunks, every one as a prefill chunk (the rows are rewritten identically).
  std::vector<ForwardChunk> mixed = planned.decode;
  mixed.push_back(planned.prefill[0]);
  std::vector<float> b;
  ASSERT_TRUE(r.Forward(mixed, cache, &b).ok());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  // Each row alone too (batch invariance through the seam).
  for (size_t i = 0; i < mixed.size(); ++i) {
    std::vector<float> one;
    ASSERT_TRUE(r.Forward({&mixed[i], 1}, cache, &one).ok());
    EXPECT_EQ(0, std::memcmp(one.data(), a.data() + i * 256, 256 * sizeof(float))) << i;
  }
  for (auto& bl : blocks) cache.allocator().Release(bl);
}

TEST_F(ModelRunnerTest, LayerWrittenSignalledOncePerLayerInOrderWithKvInPlace) {
  ModelRunner& r = engine_->runner();
  KvCache& cache = engine_->kv_cache();
  std::vector<int32_t> toks = {5, 6, 7, 8, 9};
  std::vector<int32_t> blocks = Blocks(5);
  // Poison the first slot of every layer's page; each layer's K must be written by its signal.
  for (int l = 0; l < 3; ++l) std::memset(cache.Key(l, blocks[0], 0), 0xff, 4);
  std::vector<int32_t> seen;
  ForwardBatch fb;
  fb.prefill.push_back({toks, 0, blocks, true});
  ASSERT_TRUE(r.Forward(fb, cache, [&](int32_t layer) {
                 float k0;
                 std::memcpy(&k0, cache.Key(layer, blocks[0], 0), 4);
                 EXPECT_FALSE(std::isnan(k0)) << "layer " << layer << " signalled before written";
                 seen.push_back(layer);
               }).ok());
  EXPECT_EQ(seen, (std::vector<int32_t>{0, 1, 2}));
  cache.allocator().Release(blocks);
}

TEST_F(ModelRunnerTest, SamplingIsABackendCallOverTheLastLogits) {
  ModelRunner& r = engine_->runner();
  KvCache& cache = engine_->kv_cache();
  std::vector<int32_t> toks = {1, 2, 3};
  std::vector<int32_t> blocks = Blocks(3);
  ForwardBatch fb;
  fb.prefill.push_back({toks, 0, blocks, true});
  ASSERT_TRUE(r.Forward(fb, cache).ok());
  std::vector<float> logits;
  ASSERT_TRUE(r.CopyLogits(&logits).ok());
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<SampleResult> out;
  const SampleRow row{&greedy, toks, {}, 3};
  ASSERT_TRUE(r.Sample({&row, 1}, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].token, std::max_element(logits.begin(), logits.end()) - logits.begin());
  const SampleRow two[2] = {row, row};
  Status too_many = r.Sample(two, &out);
  EXPECT_EQ(too_many.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.message().find("2 rows"), std::string::npos) << too_many.message();
  cache.allocator().Release(blocks);
}

TEST_F(ModelRunnerTest, ErrorsNameTheProblem) {
  ModelRunner& r = engine_->runner();
  KvCache& cache = engine_->kv_cache();
  std::vector<int32_t> blocks = Blocks(16);
  std::vector<int32_t> two = {1, 2};
  ForwardBatch bad_decode;
  bad_decode.decode.push_back({two, 0, blocks, true});
  Status s = r.Forward(bad_decode, cache);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("decode row"), std::string::npos) << s.message();
  std::vector<int32_t> oov = {256};
  ForwardBatch b;
  b.prefill.push_back({oov, 0, blocks, true});
  s = r.Forward(b, cache);
  EXPECT_NE(s.message().find("token id 256"), std::string::npos) << s.message();
  // A cache of another geometry.
  KvGeometry g = r.KvGeometryFor(16);
  g.num_layers = 2;
  KvCache other(g, 4);
  std::vector<int32_t> one = {1};
  ForwardBatch ok;
  ok.prefill.push_back({one, 0, std::span<const int32_t>(blocks).first(1), true});
  EXPECT_EQ(r.Forward(ok, other).code(), StatusCode::kFailedPrecondition);
  cache.allocator().Release(blocks);
}

TEST_F(ModelRunnerTest, ExportablePagePoolsAreSharedMemory) {
  // Host backends export a memfd (the shm pool); EngineOptions::kv_device_export asks for it.
  ModelRunner& r = engine_->runner();
  const KvGeometry g = r.KvGeometryFor(16);
  auto plain = r.CreatePagePool(g, 4);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->kind(), "host");
  EXPECT_EQ((*plain)->shared_fd(), -1);
  auto exported = r.CreatePagePool(g, 4, /*exportable=*/true);
  ASSERT_TRUE(exported.ok()) << exported.status().ToString();
  EXPECT_EQ((*exported)->kind(), "shm");
  EXPECT_GE((*exported)->shared_fd(), 0);
  EXPECT_EQ((*exported)->memory(), PageMemory::kHost);

  EngineOptions eo;
  eo.kv_cache_bytes = 1 << 20;
  eo.kv_device_export = true;
  auto e = Engine::Load(dir_, eo);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ((*e)->kv_cache().pool().kind(), "shm");
  EXPECT_GE((*e)->kv_cache().pool().shared_fd(), 0);
}

TEST(PagePoolTest, HostPoolLayoutAndBadGeometry) {
  KvGeometry g{2, 3, 8, 4, DType::kF32};
  auto pool = HostPagePool::Create(g, 5);
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->bytes(), 5 * g.BlockBytes());
  EXPECT_EQ((*pool)->memory(), PageMemory::kHost);
  // Layer-major, then block: page (1, 2) is 5 + 2 pages from the start.
  EXPECT_EQ((*pool)->Page(1, 2) - (*pool)->base(), static_cast<ptrdiff_t>(7 * g.PageBytes()));
  EXPECT_EQ(g.PageBytes(), 2u * 4 * 3 * 8 * 4);
  KvGeometry q = g;
  q.dtype = DType::kQ4_0;
  auto bad = HostPagePool::Create(q, 5);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("q4_0"), std::string::npos);
  EXPECT_EQ(HostPagePool::Create(g, 0).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem
