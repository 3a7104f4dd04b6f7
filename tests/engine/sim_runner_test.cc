// The simulated-compute runner (sim_runner.h): the timing model as a pure function, the profile
// parser's errors, and the runner through Engine::Load without weights — pages written for every
// token, one wait per layer adding up to the model's step time, tokens reproducible whatever the
// batch composition, dependent on the KV bytes, never EOS. No timing is asserted: waits go to a
// recorder.
#include <filesystem>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/engine/engine.h"
#include "tandem/engine/sim_runner.h"
#include "test_model.h"

namespace tandem {
namespace {

constexpr char kProfile[] = R"({
  "format": "tandem-compute-profile/1", "model": "tiny", "machine": "test",
  "prefill": {"tokens": [16, 64, 256], "seconds": [0.010, 0.030, 0.100]},
  "decode": {"batch": [1, 8], "seconds": [0.005, 0.012], "context": 128},
  "attention_seconds_per_position": 1e-6, "scale": 1.0
})";

ComputeProfile Profile() {
  auto p = ParseComputeProfile(kProfile);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return *p;
}

TEST(TimingCurveTest, InterpolatesClampsBelowAndExtrapolatesAbove) {
  TimingCurve c{{16, 64, 256}, {0.010, 0.030, 0.100}};
  EXPECT_DOUBLE_EQ(c.At(1), 0.010);
  EXPECT_DOUBLE_EQ(c.At(16), 0.010);
  EXPECT_NEAR(c.At(40), 0.020, 1e-12);
  EXPECT_NEAR(c.At(256), 0.100, 1e-12);
  EXPECT_NEAR(c.At(448), 0.170, 1e-12);  // last slope 0.07 / 192 per token
}

TEST(ComputeProfileTest, StepSeconds) {
  const ComputeProfile p = Profile();
  std::vector<int32_t> toks(64, 5), one(1, 5), table(64, 0);
  ForwardBatch prefill;
  prefill.prefill.push_back({toks, 0, table, true});
  EXPECT_NEAR(p.StepSeconds(prefill), 0.030, 1e-12);
  // A chunk starting at 100 attends 100 more positions per token.
  prefill.prefill[0].start_pos = 100;
  EXPECT_NEAR(p.StepSeconds(prefill), 0.030 + 64 * 100 * 1e-6, 1e-12);

  ForwardBatch decode;
  for (int i = 0; i < 8; ++i) decode.decode.push_back({one, 127, table, true});  // context 128
  EXPECT_NEAR(p.StepSeconds(decode), 0.012, 1e-12);
  decode.decode[0].start_pos = 227;  // 100 positions more
  EXPECT_NEAR(p.StepSeconds(decode), 0.012 + 100 * 1e-6, 1e-12);

  // Mixed: the prefill curve at every token of the step, decode rows' contexts as attention.
  ForwardBatch mixed = prefill;
  mixed.prefill[0].start_pos = 0;
  mixed.decode.push_back({one, 10, table, true});
  EXPECT_NEAR(p.StepSeconds(mixed), 0.030 + 0.07 / 192 + 10 * 1e-6, 1e-12);
  EXPECT_DOUBLE_EQ(p.StepSeconds(ForwardBatch{}), 0.0);
}

TEST(ComputeProfileTest, ParserNamesWhatIsWrong) {
  EXPECT_EQ(ParseComputeProfile("[]").status().code(), StatusCode::kInvalidArgument);
  auto missing = ParseComputeProfile(R"({"prefill": {"tokens": [1], "seconds": [1]}})");
  EXPECT_NE(missing.status().message().find("decode"), std::string::npos);
  auto descending = ParseComputeProfile(
      R"({"prefill": {"tokens": [8, 4], "seconds": [1, 2]},
          "decode": {"batch": [1], "seconds": [1]}})");
  EXPECT_NE(descending.status().message().find("ascend"), std::string::npos);
  auto uneven = ParseComputeProfile(
      R"({"prefill": {"tokens": [8], "seconds": [1]}, "decode": {"batch": [1, 2], "seconds": [1]}})");
  EXPECT_EQ(uneven.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadComputeProfile("/nonexistent/profile.json").status().code(), StatusCode::kNotFound);
}

class SimEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("sim_runner");
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    spec.layers = 3;
    testing::WriteTinyModel(dir_, spec);
    profile_ = dir_ / "profile.json";
    FILE* f = std::fopen(profile_.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(kProfile, f);
    std::fclose(f);
    auto real = Engine::Load(dir_, EngineOptions{});
    ASSERT_TRUE(real.ok()) << real.status().ToString();
    real_hash_ = (*real)->model_hash();
    // No weights: the simulated engine must not need them.
    std::filesystem::remove(dir_ / "model.safetensors");
    engine_ = Load();
  }

  std::unique_ptr<Engine> Load() {
    EngineOptions eo;
    eo.kv_cache_bytes = 8 << 20;
    eo.simulate_compute = profile_;
    auto e = Engine::Load(dir_, eo);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(e).value() : nullptr;
  }

  // Generates every request, `together` at a time, and returns each one's tokens.
  std::vector<std::vector<int32_t>> Generate(Engine& e, const std::vector<GenerationRequest>& reqs,
                                             size_t together, int32_t max_batch_tokens) {
    GeneratorOptions go;
    go.max_batch_tokens = max_batch_tokens;
    std::vector<std::vector<int32_t>> out(reqs.size());
    for (size_t first = 0; first < reqs.size(); first += together) {
      Generator g(e, go);
      std::map<int64_t, size_t> index;
      for (size_t i = first; i < std::min(reqs.size(), first + together); ++i) {
        auto h = g.Add(reqs[i]);
        EXPECT_TRUE(h.ok()) << h.status().ToString();
        index[*h] = i;
      }
      std::vector<TokenEvent> events;
      while (g.HasWork()) {
        events.clear();
        EXPECT_TRUE(g.Step(&events).ok());
        for (const TokenEvent& ev : events) out[index[ev.request]].push_back(ev.token);
      }
    }
    return out;
  }

  std::filesystem::path dir_, profile_;
  uint64_t real_hash_ = 0;
  std::unique_ptr<Engine> engine_;
};

TEST_F(SimEngineTest, LoadsWithoutWeightsUnderItsOwnModelHash) {
  ASSERT_NE(engine_, nullptr);
  EXPECT_EQ(engine_->runner().weight_bytes(), 0);
  EXPECT_NE(engine_->model_hash(), real_hash_);
  EXPECT_EQ(Load()->model_hash(), engine_->model_hash());
  EXPECT_NE(engine_->runner().Describe().find("simulated"), std::string::npos);
}

TEST_F(SimEngineTest, WritesEveryPageAndWaitsTheModelsTimeLayerByLayer) {
  ASSERT_NE(engine_, nullptr);
  SimRunnerOptions so;
  so.profile = Profile();
  std::vector<double> waits;
  so.wait = [&](double s) { waits.push_back(s); };
  auto runner = CreateSimRunner(engine_->config(), so);
  KvCache& cache = engine_->kv_cache();
  const int32_t page = cache.geometry().page_size;
  std::vector<int32_t> toks(40);
  for (size_t i = 0; i < toks.size(); ++i) toks[i] = 3 + static_cast<int32_t>(i);
  auto blocks = cache.allocator().Allocate(cache.BlocksFor(41));
  ASSERT_TRUE(blocks.ok());
  // Poison the pages: everything the forward claims to write must change.
  for (int32_t l = 0; l < cache.geometry().num_layers; ++l) {
    for (int32_t b : *blocks) {
      std::fill(cache.Page(l, b), cache.Page(l, b) + cache.geometry().PageElems(), -1.0f);
    }
  }
  ForwardBatch batch;
  batch.prefill.push_back({toks, 0, *blocks, true});
  std::vector<int32_t> layers;
  ASSERT_TRUE(runner->Forward(batch, cache, [&](int32_t l) { layers.push_back(l); }).ok());
  EXPECT_EQ(layers, (std::vector<int32_t>{0, 1, 2}));
  ASSERT_EQ(waits.size(), 3u);
  double total = 0;
  for (double w : waits) total += w;
  EXPECT_NEAR(total, so.profile.StepSeconds(batch), 1e-12);
  for (int32_t l = 0; l < cache.geometry().num_layers; ++l) {
    for (int64_t p = 0; p < 40; ++p) {
      const int32_t b = (*blocks)[p / page], s = static_cast<int32_t>(p % page);
      EXPECT_GE(*cache.Key(l, b, s), 0.0f) << "layer " << l << " position " << p;
      EXPECT_GE(*cache.Value(l, b, s), 0.0f) << "layer " << l << " position " << p;
    }
  }
  EXPECT_EQ(*cache.Key(0, (*blocks)[40 / page], 40 % page), -1.0f);  // not a position of it
  cache.allocator().Release(*blocks);
}

TEST_F(SimEngineTest, ExportablePagePoolsAreSharedMemory) {
  ASSERT_NE(engine_, nullptr);
  SimRunnerOptions so;
  so.profile = Profile();
  auto runner = CreateSimRunner(engine_->config(), so);
  const KvGeometry g = engine_->kv_cache().geometry();
  auto exported = runner->CreatePagePool(g, 4, /*exportable=*/true);
  ASSERT_TRUE(exported.ok()) << exported.status().ToString();
  EXPECT_EQ((*exported)->kind(), "shm");
  EXPECT_GE((*exported)->shared_fd(), 0);
  auto plain = runner->CreatePagePool(g, 4);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)->shared_fd(), -1);
}

TEST_F(SimEngineTest, TokensAreReproducibleAcrossBatchingAndNeverEos) {
  ASSERT_NE(engine_, nullptr);
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 6; ++i) {
    GenerationRequest r;
    for (int t = 0; t < 5 + 7 * i; ++t) r.prompt.push_back(2 + (t * 31 + i * 17) % 290);
    r.max_tokens = 6 + i;
    r.sampling.seed = 100 + i % 2;
    reqs.push_back(r);
  }
  const auto alone = Generate(*engine_, reqs, 1, 512);
  const auto together = Generate(*engine_, reqs, reqs.size(), 16);  // chunked, mixed steps
  EXPECT_EQ(alone, together);
  const auto eos = engine_->eos_ids();
  for (size_t i = 0; i < reqs.size(); ++i) {
    EXPECT_EQ(alone[i].size(), static_cast<size_t>(reqs[i].max_tokens)) << i;
    for (int32_t t : alone[i]) {
      EXPECT_EQ(std::find(eos.begin(), eos.end(), t), eos.end());
      EXPECT_GE(t, 0);
      EXPECT_LT(t, engine_->config().vocab_size);
    }
  }
  // A different seed or a different prompt gives a different stream.
  std::vector<GenerationRequest> other = {reqs[0], reqs[0]};
  other[0].sampling.seed = 7;
  other[1].prompt.back() += 1;
  const auto changed = Generate(*engine_, other, 2, 512);
  EXPECT_NE(changed[0], alone[0]);
  EXPECT_NE(changed[1], alone[0]);
}

TEST_F(SimEngineTest, NextTokenDependsOnTheKvBytesInThePages) {
  ASSERT_NE(engine_, nullptr);
  KvCache& cache = engine_->kv_cache();
  ModelRunner& runner = engine_->runner();
  std::vector<int32_t> prompt = {5, 6, 7, 8, 9}, next = {11};
  auto blocks = cache.allocator().Allocate(cache.BlocksFor(6));
  ASSERT_TRUE(blocks.ok());
  SamplingParams params;
  auto decode_token = [&]() {
    ForwardBatch b;
    b.decode.push_back({next, 5, *blocks, true});
    EXPECT_TRUE(runner.Forward(b, cache).ok());
    SampleRow row{&params, prompt, next, 6};
    std::vector<SampleResult> out;
    EXPECT_TRUE(runner.Sample(std::span<const SampleRow>(&row, 1), &out).ok());
    return out[0].token;
  };
  ForwardBatch pre;
  pre.prefill.push_back({prompt, 0, *blocks, true});
  ASSERT_TRUE(runner.Forward(pre, cache).ok());
  const int32_t first = decode_token();
  EXPECT_EQ(decode_token(), first);
  // The prompt's last slot as a receiver with a broken transfer would hold it.
  *cache.Key(0, (*blocks)[0], 4) += 1.0f;
  EXPECT_NE(decode_token(), first);
  cache.allocator().Release(*blocks);
}

}  // namespace
}  // namespace tandem
