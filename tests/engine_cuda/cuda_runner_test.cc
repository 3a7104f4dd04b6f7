// The CUDA backend against the CPU backend (the spec), on tiny random-weight Llama (GQA, llama3
// rope), Mistral (sliding window) and Qwen2 (qkv bias, tied embeddings) checkpoints with
// head_dim 64. Built twice: against the CUDA runtime (`cuda_runner_test`, label gpu: on a
// machine without a GPU only the "no device" test runs, the rest skip saying why) and against
// the CPU interpreter of the same kernel sources (`cuda_runner_interp_test`, label cuda_interp:
// everything runs).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "no_gpu.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/kv_staging.h"
#include "test_model.h"

namespace tandem {
namespace {

using testing::NoGpuReason;

struct Arch {
  const char* name;
  testing::TinyModelSpec spec;
};

std::vector<Arch> Archs() {
  std::vector<Arch> a(3);
  a[0].name = "LlamaGqaLlama3Rope";
  a[0].spec.hidden = 256;
  a[0].spec.heads = 4;
  a[0].spec.kv_heads = 1;  // group of 4
  a[0].spec.llama3_rope = true;
  a[1].name = "MistralSlidingWindow";
  a[1].spec.arch = "MistralForCausalLM";
  a[1].spec.hidden = 192;
  a[1].spec.heads = 3;
  a[1].spec.kv_heads = 3;
  a[1].spec.sliding_window = 7;
  a[2].name = "Qwen2QkvBiasTied";
  a[2].spec.arch = "Qwen2ForCausalLM";
  a[2].spec.hidden = 128;
  a[2].spec.heads = 2;
  a[2].spec.kv_heads = 1;
  a[2].spec.qkv_bias = true;
  a[2].spec.tied = true;
  for (Arch& x : a) {
    x.spec.intermediate = 160;
    x.spec.vocab = 211;
    x.spec.layers = 2;
    x.spec.seed = 11;
  }
  return a;
}

std::unique_ptr<Engine> Load(const std::filesystem::path& dir, Device device,
                             std::optional<DType> weights = DType::kF32) {
  EngineOptions eo;
  eo.device = device;
  eo.deterministic = true;
  eo.weights = weights;
  eo.kv_cache_bytes = 4 << 20;
  auto e = Engine::Load(dir, eo);
  EXPECT_TRUE(e.ok()) << e.status().ToString();
  return e.ok() ? std::move(e).value() : nullptr;
}

// Every generated token of each request, run together through one Generator.
std::vector<std::vector<int32_t>> Generate(Engine& e, const std::vector<GenerationRequest>& reqs) {
  Generator g(e, GeneratorOptions{});
  std::vector<int64_t> handles;
  for (const GenerationRequest& r : reqs) {
    auto h = g.Add(r);
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    handles.push_back(h.ok() ? *h : -1);
  }
  std::vector<std::vector<int32_t>> out(reqs.size());
  while (g.HasWork()) {
    std::vector<TokenEvent> events;
    const Status st = g.Step(&events);
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) break;
    for (const TokenEvent& ev : events) {
      const auto it = std::find(handles.begin(), handles.end(), ev.request);
      if (it != handles.end() && ev.token >= 0) out[it - handles.begin()].push_back(ev.token);
    }
  }
  return out;
}

std::vector<GenerationRequest> Requests(int vocab) {
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r;
    for (int t = 0; t < 9 + 7 * i; ++t) r.prompt.push_back((31 * t + 17 * i + 2) % vocab);
    r.max_tokens = 10;
    r.ignore_eos = true;
    if (i % 2 == 0) {
      r.sampling.temperature = 0.0f;  // greedy
    } else {
      r.sampling.temperature = 0.9f;
      r.sampling.top_k = 40;
      r.sampling.top_p = 0.95f;
      r.sampling.repetition_penalty = 1.1f;
      r.sampling.seed = 1000 + i;
    }
    reqs.push_back(std::move(r));
  }
  return reqs;
}

class CudaParityTest : public ::testing::TestWithParam<Arch> {
 protected:
  void SetUp() override {
    const std::string reason = NoGpuReason();
    if (!reason.empty()) GTEST_SKIP() << "no GPU here (" << reason << ")";
    dir_ = testing::TempDir(std::string("cuda_parity_") + GetParam().name);
    testing::WriteTinyModel(dir_, GetParam().spec);
  }
  void TearDown() override {
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  std::filesystem::path dir_;
};

TEST_P(CudaParityTest, SameTokensAsTheCpuGreedyAndSeeded) {
  auto cpu = Load(dir_, Device::kCpu);
  auto gpu = Load(dir_, Device::kCuda);
  ASSERT_TRUE(cpu && gpu);
  const auto reqs = Requests(GetParam().spec.vocab);
  const auto want = Generate(*cpu, reqs);
  const auto got = Generate(*gpu, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(want[i].size(), 10u);
    EXPECT_EQ(got[i], want[i]) << "request " << i << " (" << gpu->runner().Describe() << ")";
  }
}

TEST_P(CudaParityTest, LogitsCloseToTheCpuAndLayerSignalInOrder) {
  auto cpu = Load(dir_, Device::kCpu);
  auto gpu = Load(dir_, Device::kCuda);
  ASSERT_TRUE(cpu && gpu);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 37; ++t) prompt.push_back((7 * t + 3) % GetParam().spec.vocab);
  std::vector<std::vector<float>> logits(2);
  std::vector<int32_t> layers;
  int i = 0;
  for (Engine* e : {cpu.get(), gpu.get()}) {
    auto blocks = e->kv_cache().allocator().Allocate(e->kv_cache().BlocksFor(prompt.size()));
    ASSERT_TRUE(blocks.ok());
    // Two chunks: 20 tokens, then 17 more reading the first chunk's pages.
    ForwardChunk a{std::span<const int32_t>(prompt).first(20), 0, *blocks, false};
    ForwardChunk b{std::span<const int32_t>(prompt).subspan(20), 20, *blocks, true};
    std::vector<float> ignored;
    ASSERT_TRUE(
        e->runner().Forward(std::span<const ForwardChunk>(&a, 1), e->kv_cache(), &ignored).ok());
    const LayerWrittenFn hook = [&](int32_t l) {
      if (e == gpu.get()) layers.push_back(l);
    };
    const Status st =
        e->runner().Forward(std::span<const ForwardChunk>(&b, 1), e->kv_cache(), &logits[i], hook);
    ASSERT_TRUE(st.ok()) << st.ToString();
    ++i;
  }
  ASSERT_EQ(logits[0].size(), logits[1].size());
  float max_ref = 0, max_diff = 0;
  for (size_t j = 0; j < logits[0].size(); ++j) {
    max_ref = std::max(max_ref, std::fabs(logits[0][j]));
    max_diff = std::max(max_diff, std::fabs(logits[0][j] - logits[1][j]));
  }
  EXPECT_LE(max_diff, 1e-4f * std::max(1.0f, max_ref)) << "max |logit| " << max_ref;
  EXPECT_EQ(layers, (std::vector<int32_t>{0, 1}));
}

TEST_P(CudaParityTest, DeterministicDecodeIsBatchInvariantWithAndWithoutGraphs) {
  // The same sequence decoded alone and as row 2 of 3 gives bit-identical logits; decode steps
  // replayed from a captured graph give the eager step's logits, also when the sequence grows
  // past a graph's length bucket (64 positions) and a longer one is captured.
  auto config = LoadModelConfig(dir_);
  ASSERT_TRUE(config.ok());
  std::vector<std::vector<float>> results;
  for (bool graphs : {false, true}) {
    for (int batch : {1, 3}) {
      auto weights = ModelWeights::Load(dir_, *config);
      ASSERT_TRUE(weights.ok());
      CudaRunnerOptions o;
      o.weights = DType::kF32;
      o.deterministic = true;
      o.cuda_graphs = graphs;
      auto runner = CreateCudaRunner(*config, std::move(weights).value(), o);
      ASSERT_TRUE(runner.ok()) << runner.status().ToString();
      const KvGeometry g = (*runner)->KvGeometryFor(16);
      auto pool = (*runner)->CreatePagePool(g, 64);
      ASSERT_TRUE(pool.ok());
      KvCache cache(std::move(pool).value());
      std::vector<std::vector<int32_t>> prompts, blocks;
      std::vector<int> seeds;
      for (int s = 0; s < batch; ++s) {
        std::vector<int32_t> p;
        // Row 1 of a 3-batch (the middle one) is the sequence under test.
        const int seed = (batch == 1 || s == 1) ? 0 : s + 5;
        seeds.push_back(seed);
        const int len = seed == 0 ? 61 : 21 + 4 * seed;
        for (int t = 0; t < len; ++t) p.push_back((13 * t + seed) % config->vocab_size);
        prompts.push_back(p);
        blocks.push_back(*cache.allocator().Allocate(cache.BlocksFor(p.size() + 6)));
      }
      std::vector<ForwardChunk> prefill;
      for (int s = 0; s < batch; ++s) prefill.push_back({prompts[s], 0, blocks[s], true});
      std::vector<float> logits;
      ASSERT_TRUE((*runner)->Forward(prefill, cache, &logits).ok());
      std::vector<float> mine;
      for (int step = 0; step < 6; ++step) {
        ForwardBatch fb;
        std::vector<std::vector<int32_t>> next(batch);
        for (int s = 0; s < batch; ++s) {
          next[s] = {static_cast<int32_t>((step * 7 + seeds[s]) % config->vocab_size)};
          fb.decode.push_back(
              {next[s], static_cast<int64_t>(prompts[s].size()) + step, blocks[s], true});
        }
        ASSERT_TRUE((*runner)->Forward(fb, cache).ok());
        ASSERT_TRUE((*runner)->CopyLogits(&logits).ok());
        const int row = batch == 1 ? 0 : 1;
        mine.insert(mine.end(), logits.begin() + row * config->vocab_size,
                    logits.begin() + (row + 1) * config->vocab_size);
      }
      results.push_back(mine);
    }
  }
  for (size_t r = 1; r < results.size(); ++r) {
    EXPECT_EQ(results[r], results[0]) << "variant " << r << " (graphs, batch) differs";
  }
}

TEST_P(CudaParityTest, Bf16WeightsStayNearTheF32Logits) {
  auto f32 = Load(dir_, Device::kCuda, DType::kF32);
  auto bf16 = Load(dir_, Device::kCuda, std::nullopt);  // the CUDA default: bf16
  ASSERT_TRUE(f32 && bf16);
  EXPECT_NE(bf16->runner().Describe().find("bf16"), std::string::npos);
  std::vector<int32_t> prompt;
  for (int t = 0; t < 12; ++t) prompt.push_back((5 * t + 1) % GetParam().spec.vocab);
  std::vector<std::vector<float>> logits(2);
  int i = 0;
  for (Engine* e : {f32.get(), bf16.get()}) {
    auto blocks = e->kv_cache().allocator().Allocate(e->kv_cache().BlocksFor(prompt.size()));
    ForwardChunk c{prompt, 0, *blocks, true};
    ASSERT_TRUE(e->runner()
                    .Forward(std::span<const ForwardChunk>(&c, 1), e->kv_cache(), &logits[i++])
                    .ok());
  }
  float max_ref = 0, max_diff = 0;
  for (size_t j = 0; j < logits[0].size(); ++j) {
    max_ref = std::max(max_ref, std::fabs(logits[0][j]));
    max_diff = std::max(max_diff, std::fabs(logits[0][j] - logits[1][j]));
  }
  EXPECT_GT(max_diff, 0.0f) << "bf16 should round somewhere";
  EXPECT_LE(max_diff, 0.1f * max_ref);
}

INSTANTIATE_TEST_SUITE_P(Archs, CudaParityTest, ::testing::ValuesIn(Archs()),
                         [](const auto& info) { return std::string(info.param.name); });

class CudaErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir("cuda_errors");
    testing::TinyModelSpec spec = Archs()[2].spec;
    testing::WriteTinyModel(dir_, spec);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

// The interpreter always has its one device: this case exists only against the CUDA runtime.
#ifndef TANDEM_CUDA_INTERP
TEST_F(CudaErrorsTest, WithoutAGpuTheErrorNamesTheMissingDevice) {
  const std::string reason = NoGpuReason();
  if (reason.empty()) GTEST_SKIP() << "a GPU is present; the no-device path is not reachable";
  EngineOptions eo;
  eo.device = Device::kCuda;
  auto e = Engine::Load(dir_, eo);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kUnavailable) << e.status().ToString();
  EXPECT_NE(e.status().message().find("no usable CUDA device"), std::string::npos)
      << e.status().ToString();
}
#endif

TEST_F(CudaErrorsTest, UnsupportedShapesAndDtypesAreInvalidArguments) {
  if (!NoGpuReason().empty()) GTEST_SKIP() << "needs a CUDA device (or the interpreter)";
  EngineOptions eo;
  eo.device = Device::kCuda;
  eo.kv_cache_bytes = 1 << 20;
  eo.weights = DType::kQ4_0;
  auto q = Engine::Load(dir_, eo);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("q4_0"), std::string::npos) << q.status().ToString();

  const auto small = testing::TempDir("cuda_errors_hd8");
  testing::TinyModelSpec spec;  // head_dim 48 / 6 = 8
  testing::WriteTinyModel(small, spec);
  eo.weights = std::nullopt;
  auto h = Engine::Load(small, eo);
  std::filesystem::remove_all(small);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(h.status().message().find("head_dim"), std::string::npos) << h.status().ToString();
}

TEST_F(CudaErrorsTest, ForwardRejectsAHostCacheAndBadChunks) {
  if (!NoGpuReason().empty()) GTEST_SKIP() << "needs a CUDA device (or the interpreter)";
  auto e = Load(dir_, Device::kCuda);
  ASSERT_TRUE(e);
  KvCache host(e->kv_cache().geometry(), 8);
  std::vector<int32_t> tokens = {1, 2, 3};
  std::vector<int32_t> blocks = {0};
  ForwardChunk c{tokens, 0, blocks, true};
  std::vector<float> logits;
  Status st = e->runner().Forward(std::span<const ForwardChunk>(&c, 1), host, &logits);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  std::vector<int32_t> bad = {1, 100000};
  ForwardChunk b{bad, 0, blocks, true};
  st = e->runner().Forward(std::span<const ForwardChunk>(&b, 1), e->kv_cache(), &logits);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("vocabulary"), std::string::npos) << st.ToString();
  std::vector<int32_t> many(40, 1);
  ForwardChunk m{many, 0, blocks, true};  // one block of 16 cannot hold 40 positions
  st = e->runner().Forward(std::span<const ForwardChunk>(&m, 1), e->kv_cache(), &logits);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
}

TEST_F(CudaErrorsTest, DevicePagesRoundTripThroughTheHostMirror) {
  // Host staging of the TCP KV transport: mirror → device for every layer of some blocks, then
  // device → a cleared mirror layer by layer gives the same bytes back; untouched pages stay.
  if (!NoGpuReason().empty()) GTEST_SKIP() << "needs a CUDA device (or the interpreter)";
  auto e = Load(dir_, Device::kCuda);
  ASSERT_TRUE(e);
  PagePool& device = e->kv_cache().pool();
  ASSERT_EQ(device.memory(), PageMemory::kDevice);
  auto staging = KvStaging::ForPool(device);
  ASSERT_TRUE(staging.ok()) << staging.status().ToString();
  ASSERT_NE(*staging, nullptr);
  PagePool& mirror = (*staging)->mirror();
  ASSERT_EQ(mirror.memory(), PageMemory::kHost);
  ASSERT_EQ(mirror.num_blocks(), device.num_blocks());
  ASSERT_GE(device.num_blocks(), 4);
  const KvGeometry& g = device.geometry();
  auto pattern = [&](int32_t layer, int32_t block, size_t i) {
    return std::byte((3 * layer + 11 * block + i) & 0xff);
  };
  const std::vector<int32_t> blocks = {3, 0, 1};  // runs {3}, {0, 1}
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t b : blocks) {
      for (size_t i = 0; i < g.PageBytes(); ++i) mirror.Page(l, b)[i] = pattern(l, b, i);
    }
  }
  ASSERT_TRUE((*staging)->ToDevice(blocks).ok());
  std::memset(mirror.base(), 0, mirror.bytes());
  const std::vector<int32_t> with_untouched = {0, 1, 2, 3};
  for (int32_t l = 0; l < g.num_layers; ++l) {
    ASSERT_TRUE((*staging)->ToHost(l, with_untouched).ok());
  }
  for (int32_t l = 0; l < g.num_layers; ++l) {
    for (int32_t b : blocks) {
      for (size_t i = 0; i < g.PageBytes(); ++i) {
        ASSERT_EQ(mirror.Page(l, b)[i], pattern(l, b, i)) << l << " " << b << " " << i;
      }
    }
  }
  EXPECT_EQ((*staging)->staged_bytes(),
            static_cast<int64_t>((3 + 4) * g.BlockBytes()));  // 3 blocks in, 4 out
  EXPECT_EQ((*staging)->TakeStagedBytes(), (*staging)->staged_bytes());
  EXPECT_EQ((*staging)->TakeStagedBytes(), 0);
  const std::vector<int32_t> past = {device.num_blocks()};
  EXPECT_EQ((*staging)->ToHost(0, past).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace tandem
