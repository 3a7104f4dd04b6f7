// Parity for stored weight formats (issue 10): an engine storing its matrices as bf16 / q8_0 /
// q4_0 / q4_1 gives exactly the logits of the f32 engine run on the dequantized weights —
// the definition of parity for quantized weights — and every format is thread-count invariant.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "tandem/engine/checkpoint.h"
#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/engine.h"
#include "tandem/kernels/ref/dequant.h"
#include "test_model.h"

namespace tandem {
namespace {

// Copies the checkpoint in `from` to `to`, every matrix replaced by its value after storing it
// as `dtype` (vectors stay f32).
void WriteDequantized(const std::filesystem::path& from, const std::filesystem::path& to,
                      DType dtype) {
  std::filesystem::create_directories(to);
  std::filesystem::copy_file(from / "config.json", to / "config.json",
                             std::filesystem::copy_options::overwrite_existing);
  auto ck = Checkpoint::Open(from);
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  std::map<std::string, testing::RawTensor> out;
  for (const auto& [name, view] : (*ck)->tensors()) {
    std::vector<float> v(view.NumElements());
    Checkpoint::ToFloat32(view, v.data());
    if (view.shape.size() == 2) {
      std::vector<uint8_t> stored(DTypeBytes(dtype, view.NumElements()));
      kernels::ref::Quantize(dtype, v.data(), view.NumElements(), stored.data());
      kernels::ref::Dequantize(dtype, stored.data(), view.NumElements(), v.data());
    }
    out[name] = testing::F32Tensor(view.shape, v);
  }
  testing::WriteSafetensors(to / "model.safetensors", out);
}

std::vector<float> Logits(Engine& e, const std::vector<int32_t>& tokens) {
  KvCache& cache = e.kv_cache();
  auto blocks = cache.allocator().Allocate(cache.BlocksFor(tokens.size()));
  EXPECT_TRUE(blocks.ok());
  // A prompt in two chunks, then one decode row: every position's logits.
  std::vector<float> all, l;
  for (auto [start, n] : {std::pair<int64_t, int64_t>{0, 9}, {9, 7}, {16, 1}}) {
    ForwardChunk ch{std::span<const int32_t>(tokens).subspan(start, n), start, *blocks, true};
    EXPECT_TRUE(e.runner().Forward({&ch, 1}, cache, &l).ok());
    all.insert(all.end(), l.begin(), l.end());
  }
  cache.allocator().Release(*blocks);
  return all;
}

class QuantizedParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizedParityTest, LogitsEqualTheF32EngineOnDequantizedWeights) {
  const DType dtype = *ParseDType(GetParam());
  const auto dir = testing::TempDir("qparity_" + GetParam());
  testing::TinyModelSpec spec;
  spec.hidden = 96;
  spec.intermediate = 160;
  spec.heads = 3;
  spec.kv_heads = 1;
  spec.vocab = 320;
  spec.layers = 2;
  spec.tied = GetParam() != "q4_0";  // both head layouts
  testing::WriteTinyModel(dir / "orig", spec);
  WriteDequantized(dir / "orig", dir / "deq", dtype);

  EngineOptions eo;
  eo.kv_cache_bytes = 4 << 20;
  eo.weights = dtype;
  auto stored = Engine::Load(dir / "orig", eo);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  eo.weights = DType::kF32;
  auto reference = Engine::Load(dir / "deq", eo);
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();

  std::mt19937 rng(5);
  std::vector<int32_t> tokens(17);
  for (auto& t : tokens) t = rng() % spec.vocab;
  const std::vector<float> got = Logits(**stored, tokens);
  const std::vector<float> want = Logits(**reference, tokens);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
      << GetParam() << " differs from f32 on its dequantized weights";

  // Thread-count invariance of the stored format.
  const int threads = cpu::NumThreads();
  cpu::SetNumThreads(1);
  const std::vector<float> one = Logits(**stored, tokens);
  cpu::SetNumThreads(threads);
  EXPECT_EQ(0, std::memcmp(one.data(), got.data(), got.size() * sizeof(float)))
      << GetParam() << ": 1 thread differs from " << threads;
}

INSTANTIATE_TEST_SUITE_P(Formats, QuantizedParityTest,
                         ::testing::Values("bf16", "q8_0", "q4_0", "q4_1"));

TEST(QuantizedParityTest, RowLengthNotABlockMultipleIsNamed) {
  const auto dir = testing::TempDir("qparity_bad");
  testing::TinyModelSpec spec;
  spec.hidden = 40;  // not a multiple of 32
  spec.intermediate = 64;
  spec.heads = 2;
  spec.kv_heads = 1;
  spec.vocab = 64;
  spec.layers = 1;
  testing::WriteTinyModel(dir, spec);
  EngineOptions eo;
  eo.kv_cache_bytes = 1 << 20;
  eo.weights = DType::kQ8_0;
  auto e = Engine::Load(dir, eo);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("q8_0"), std::string::npos) << e.status().message();
}

}  // namespace
}  // namespace tandem
