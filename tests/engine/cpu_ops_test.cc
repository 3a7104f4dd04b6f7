// The fast CPU ops against their references (tandem/kernels/ref/ops.h) on odd shapes, and
// their batch invariance.
#include "tandem/engine/cpu_ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "tandem/kernels/ref/ops.h"

namespace tandem {
namespace {

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// Every element within atol + rtol * |ref|.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& ref, float atol,
                 float rtol) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - ref[i]), atol + rtol * std::fabs(ref[i]))
        << "element " << i << ": got " << got[i] << ", reference " << ref[i];
  }
}

TEST(CpuOpsTest, RmsNormSwiGluRopeMatchReference) {
  for (int dim : {37, 576, 1002}) {
    const int n = 5;
    auto x = Random(n * dim, 6), w = Random(dim, 7);
    std::vector<float> got(n * dim), ref(n * dim);
    cpu::RmsNorm(x.data(), w.data(), n, dim, 1e-5f, got.data());
    ref::RmsNorm(x.data(), w.data(), n, dim, 1e-5f, ref.data());
    ExpectClose(got, ref, 1e-5f, 1e-5f);
    auto g = Random(n * dim, 8, 3.0f), u = Random(n * dim, 9);
    cpu::SwiGlu(g.data(), u.data(), n, dim, got.data());
    ref::SwiGlu(g.data(), u.data(), n, dim, ref.data());
    ExpectClose(got, ref, 1e-30f, 5e-7f);  // exp within 1.01 ulp
  }
  ModelConfig c;
  c.head_dim = 34;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 64;
  auto inv = cpu::RopeInvFreq(c);
  const int n = 6, heads = 3;
  std::vector<int32_t> pos = {0, 1, 17, 63, 64, 4000};
  auto x = Random(n * heads * c.head_dim, 10), y = x;
  cpu::Rope(x.data(), pos.data(), inv.data(), n, heads, c.head_dim);
  ref::Rope(y.data(), pos.data(), inv.data(), n, heads, c.head_dim);
  ExpectClose(x, y, 0.0f, 0.0f);
}

// SwiGlu takes a row's elements eight at a time and its last (f mod 8) one by one: both give
// the same bits, so a value's result does not depend on where in the row it sits.
TEST(CpuOpsTest, SwiGluGivesTheSameBitsInTheVectorBodyAndTheTail) {
  const int f = 15, pairs = 300;  // 8 in the body, 7 in the tail
  auto g = Random(pairs * f, 21, 4.0f), u = Random(pairs * f, 22);
  g[0] = -95.0f;  // past the clamp of exp(-g)
  g[1] = 90.0f;
  // Row 2p holds values p; row 2p + 1 the same rotated by 8, so that the 7 values of row 2p's
  // tail go through the vector body there.
  std::vector<float> gate(2 * pairs * f), up(gate.size()), out(gate.size());
  for (int p = 0; p < pairs; ++p) {
    for (int j = 0; j < f; ++j) {
      gate[2 * p * f + j] = g[p * f + j];
      up[2 * p * f + j] = u[p * f + j];
      gate[(2 * p + 1) * f + j] = g[p * f + (j + 8) % f];
      up[(2 * p + 1) * f + j] = u[p * f + (j + 8) % f];
    }
  }
  cpu::SwiGlu(gate.data(), up.data(), 2 * pairs, f, out.data());
  for (int p = 0; p < pairs; ++p) {
    for (int j = 0; j < f; ++j) {
      const float a = out[2 * p * f + j], b = out[(2 * p + 1) * f + (j + f - 8) % f];
      ASSERT_EQ(std::memcmp(&a, &b, sizeof(a)), 0)
          << "row pair " << p << ", value " << j << ": " << a << " vs " << b;
    }
  }
  std::vector<float> ref(gate.size());
  ref::SwiGlu(gate.data(), up.data(), 2 * pairs, f, ref.data());
  ExpectClose(out, ref, 1e-30f, 5e-7f);  // exp within 1.01 ulp
}

TEST(CpuOpsTest, Llama3RopeScalingKeepsHighAndScalesLowFrequencies) {
  ModelConfig c;
  c.head_dim = 64;
  c.rope_theta = 500000.0;
  auto plain = cpu::RopeInvFreq(c);
  c.rope_scaling.type = RopeScaling::Type::kLlama3;
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 8192;
  auto scaled = cpu::RopeInvFreq(c);
  EXPECT_EQ(scaled.front(), plain.front());             // wavelength 2π: untouched
  EXPECT_FLOAT_EQ(scaled.back(), plain.back() / 8.0f);  // longest wavelength: divided
  c.rope_scaling.type = RopeScaling::Type::kLinear;
  c.rope_scaling.factor = 4;
  EXPECT_FLOAT_EQ(cpu::RopeInvFreq(c)[3], plain[3] / 4.0f);
}

// Paged attention over a cache filled in pages of several sizes equals dense attention, for a
// head size the vector path takes (64) and one it does not (10).
TEST(CpuOpsTest, PagedAttentionMatchesReference) {
  for (int d : {10, 64}) {
    for (int page_size : {1, 3, 16}) {
      for (int window : {0, 5}) {
        SCOPED_TRACE(testing::Message()
                     << "d " << d << " page " << page_size << " window " << window);
        const int heads = 6, kv_heads = 2, len = 23;
        KvGeometry layout{1, kv_heads, d, page_size};
        KvCache cache(layout, 64);
        auto blocks = cache.allocator().Allocate(cache.BlocksFor(len));
        ASSERT_TRUE(blocks.ok());
        // Scatter blocks so the table is not the identity.
        std::vector<int32_t> table(blocks->rbegin(), blocks->rend());
        auto k = Random(len * kv_heads * d, 11), v = Random(len * kv_heads * d, 12);
        auto q = Random(len * heads * d, 13);
        std::vector<int32_t> pos(len);
        std::vector<const int32_t*> tables(len, table.data());
        for (int i = 0; i < len; ++i) pos[i] = i;
        cpu::WriteKv(cache, 0, k.data(), v.data(), pos.data(), tables.data(), len);
        std::vector<float> got(len * heads * d), ref(len * heads * d);
        const float scale = 1.0f / std::sqrt(float(d));
        cpu::PagedAttention(cache, 0, q.data(), pos.data(), tables.data(), len, heads, window,
                            scale, got.data());
        ref::Attention(q.data(), k.data(), v.data(), pos.data(), len, len, heads, kv_heads, d,
                       window, scale, ref.data());
        ExpectClose(got, ref, 1e-5f, 1e-4f);
        cache.allocator().Release(*blocks);
      }
    }
  }
}

// A row's attention output has the same bits alone and among other rows of other sequences
// (decode batches) or of its own (prefill chunks), with threads or without, whether the call
// shares out whole rows or (a few long rows) their KV heads.
TEST(CpuOpsTest, PagedAttentionRowIsTheSameAloneOrInABatch) {
  const int heads = 9, kv_heads = 3, d = 64, page = 16;
  const std::vector<int> lens = {45, 45, 45, 1000};  // 1000: enough work alone for threads
  KvCache cache(KvGeometry{1, kv_heads, d, page}, 80);
  std::vector<std::vector<int32_t>> tables;
  for (size_t s = 0; s < lens.size(); ++s) {
    const int len = lens[s];
    auto b = cache.allocator().Allocate(cache.BlocksFor(len));
    ASSERT_TRUE(b.ok());
    tables.emplace_back(b->rbegin(), b->rend());
    auto k = Random(len * kv_heads * d, 30 + s), v = Random(len * kv_heads * d, 40 + s);
    std::vector<int32_t> pos(len);
    for (int i = 0; i < len; ++i) pos[i] = i;
    std::vector<const int32_t*> t(len, tables[s].data());
    cpu::WriteKv(cache, 0, k.data(), v.data(), pos.data(), t.data(), len);
  }
  // Rows: sequence 0 at 44, sequence 1 at 17..44 (a chunk), sequence 2 at 3, sequence 3 at 999.
  std::vector<int32_t> pos = {44};
  std::vector<const int32_t*> row_tables = {tables[0].data()};
  for (int p = 17; p < 45; ++p) {
    pos.push_back(p);
    row_tables.push_back(tables[1].data());
  }
  pos.push_back(3);
  row_tables.push_back(tables[2].data());
  pos.push_back(999);
  row_tables.push_back(tables[3].data());
  const int n = static_cast<int>(pos.size());
  auto q = Random(n * heads * d, 50);
  const float scale = 0.125f;
  const int threads_before = cpu::NumThreads();
  for (int threads : {1, 2}) {
    cpu::SetNumThreads(threads);
    std::vector<float> batch(n * heads * d), alone(heads * d);
    cpu::PagedAttention(cache, 0, q.data(), pos.data(), row_tables.data(), n, heads, 0, scale,
                        batch.data());
    for (int i = 0; i < n; ++i) {
      cpu::PagedAttention(cache, 0, q.data() + i * heads * d, &pos[i], &row_tables[i], 1, heads, 0,
                          scale, alone.data());
      ASSERT_EQ(std::memcmp(alone.data(), batch.data() + i * heads * d, alone.size() * 4), 0)
          << "row " << i << " (position " << pos[i] << "), " << threads << " threads";
    }
  }
  cpu::SetNumThreads(threads_before);
}

}  // namespace
}  // namespace tandem
