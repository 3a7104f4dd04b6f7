// The K/V a decode row writes for a token are bit-identical to what a prefill chunk writes for
// the same token at the same position (CPU backend). This is what would let a decode worker
// cache the blocks of generated tokens and hand them to a later prompt that contains them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>

#include "tandem/engine/engine.h"
#include "test_model.h"

namespace tandem {
namespace {

class DecodeKvParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(testing::TempDir("decode_kv_parity"));
    testing::TinyModelSpec spec;
    spec.vocab = 300;
    testing::WriteTinyModel(*dir_, spec);
  }
  static void TearDownTestSuite() { delete dir_; }
  static inline std::filesystem::path* dir_ = nullptr;
};

// Token positions whose K or V differ between one prefill chunk and decode rows, on the model in
// `dir` (-1 when it cannot be loaded).
int64_t DifferingPositions(const std::filesystem::path& dir) {
  EngineOptions eo;
  eo.kv_cache_bytes = 64 << 20;
  eo.num_threads = 2;
  eo.prefix_cache = false;
  auto loaded = Engine::Load(dir, eo);
  EXPECT_TRUE(loaded.ok()) << loaded.status().ToString();
  if (!loaded.ok()) return -1;
  Engine& e = **loaded;
  KvCache& cache = e.kv_cache();
  const int32_t vocab = std::min(e.config().vocab_size, 20000);

  std::mt19937 rng(7);
  std::vector<int32_t> tokens, other;
  for (int i = 0; i < 45; ++i) tokens.push_back(2 + static_cast<int32_t>(rng() % (vocab - 2)));
  for (int i = 0; i < 60; ++i) other.push_back(2 + static_cast<int32_t>(rng() % (vocab - 2)));
  const int64_t prompt = 13;
  const int64_t n = static_cast<int64_t>(tokens.size());

  // Prefill: every token in one chunk.
  auto a = cache.allocator().Allocate(cache.BlocksFor(n));
  if (!(a.ok())) {
    ADD_FAILURE() << "a.ok()";
    return -1;
  }
  {
    ForwardBatch b;
    b.prefill.push_back({tokens, 0, *a, true});
    if (!(e.runner().Forward(b, cache).ok())) {
      ADD_FAILURE() << "e.runner().Forward(b, cache).ok()";
      return -1;
    }
  }

  // Decode: the prompt as a chunk, then one decode row per token, batched with another
  // sequence's rows and prefill chunks (as a decode worker's steps are).
  auto b_blocks = cache.allocator().Allocate(cache.BlocksFor(n));
  auto o_blocks = cache.allocator().Allocate(cache.BlocksFor(other.size()));
  if (!(b_blocks.ok() && o_blocks.ok())) {
    ADD_FAILURE() << "b_blocks.ok() && o_blocks.ok()";
    return -1;
  }
  {
    ForwardBatch b;
    b.prefill.push_back({std::span<const int32_t>(tokens).first(prompt), 0, *b_blocks, true});
    b.prefill.push_back({std::span<const int32_t>(other).first(20), 0, *o_blocks, true});
    if (!(e.runner().Forward(b, cache).ok())) {
      ADD_FAILURE() << "e.runner().Forward(b, cache).ok()";
      return -1;
    }
  }
  int64_t other_done = 20;
  for (int64_t pos = prompt; pos < n; ++pos) {
    ForwardBatch b;
    b.decode.push_back({std::span<const int32_t>(tokens).subspan(pos, 1), pos, *b_blocks, true});
    if (pos % 3 == 0 && other_done < static_cast<int64_t>(other.size())) {
      b.decode.push_back(
          {std::span<const int32_t>(other).subspan(other_done, 1), other_done, *o_blocks, true});
      ++other_done;
    } else if (other_done + 4 <= static_cast<int64_t>(other.size())) {
      b.prefill.push_back(
          {std::span<const int32_t>(other).subspan(other_done, 4), other_done, *o_blocks, true});
      other_done += 4;
    }
    if (!(e.runner().Forward(b, cache).ok())) {
      ADD_FAILURE() << "e.runner().Forward(b, cache).ok()";
      return -1;
    }
  }

  const KvGeometry& g = cache.geometry();
  const size_t bytes = static_cast<size_t>(g.TokenElems()) * sizeof(float);
  int64_t differing = 0;
  for (int32_t layer = 0; layer < g.num_layers; ++layer) {
    for (int64_t pos = 0; pos < n; ++pos) {
      const int32_t blk = static_cast<int32_t>(pos / g.page_size);
      const int32_t slot = static_cast<int32_t>(pos % g.page_size);
      const bool same_k = std::memcmp(cache.Key(layer, (*a)[blk], slot),
                                      cache.Key(layer, (*b_blocks)[blk], slot), bytes) == 0;
      const bool same_v = std::memcmp(cache.Value(layer, (*a)[blk], slot),
                                      cache.Value(layer, (*b_blocks)[blk], slot), bytes) == 0;
      if (!same_k || !same_v) ++differing;
    }
  }
  cache.allocator().Release(*a);
  cache.allocator().Release(*b_blocks);
  cache.allocator().Release(*o_blocks);
  return differing;
}

TEST_F(DecodeKvParityTest, DecodeRowsWriteTheKvOfOnePrefillChunk) {
  EXPECT_EQ(DifferingPositions(*dir_), 0);
}

// The real checkpoint too when the test environment names one (TANDEM_MODEL_DIR).
TEST_F(DecodeKvParityTest, DecodeRowsWriteTheKvOfOnePrefillChunkOnTheRealModel) {
  const char* env = std::getenv("TANDEM_MODEL_DIR");
  if (env == nullptr || !std::filesystem::exists(env)) GTEST_SKIP() << "TANDEM_MODEL_DIR not set";
  EXPECT_EQ(DifferingPositions(env), 0);
}

}  // namespace
}  // namespace tandem
