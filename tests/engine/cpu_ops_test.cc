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
    ExpectClose(got, ref, 0.0f, 0.0f);
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

// Paged attention over a cache filled in pages of several sizes equals dense attention.
TEST(CpuOpsTest, PagedAttentionMatchesReference) {
  for (int page_size : {1, 3, 16}) {
    for (int window : {0, 5}) {
      const int heads = 6, kv_heads = 2, d = 10, len = 23;
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
      cpu::PagedAttention(cache, 0, q.data(), pos.data(), tables.data(), len, heads, window, scale,
                          got.data());
      ref::Attention(q.data(), k.data(), v.data(), pos.data(), len, len, heads, kv_heads, d, window,
                     scale, ref.data());
      ExpectClose(got, ref, 1e-5f, 1e-4f);
      cache.allocator().Release(*blocks);
    }
  }
}

}  // namespace
}  // namespace tandem
