// Embedding, RMSNorm (+ residual), RoPE, SwiGLU, argmax and KV write against the CPU references.
#include <algorithm>
#include <cstring>
#include <limits>

#include "gpu_test_util.h"
#include "tandem/kernels/cuda/argmax.h"
#include "tandem/kernels/cuda/embedding.h"
#include "tandem/kernels/cuda/kv_write.h"
#include "tandem/kernels/cuda/rmsnorm.h"
#include "tandem/kernels/cuda/rope.h"
#include "tandem/kernels/cuda/swiglu.h"
#include "tandem/kernels/ref/ops.h"

namespace tandem::cuda::testing {
namespace {

template <typename T>
class ElementwiseTest : public GpuTest {};
TYPED_TEST_SUITE(ElementwiseTest, DTypes);

TYPED_TEST(ElementwiseTest, EmbeddingMatchesReference) {
  using T = TypeParam;
  for (int64_t dim : {37, 1002}) {
    const int64_t vocab = 101, n = 19;
    std::vector<T> table;
    std::vector<float> table_f;
    RandomRounded<T>(vocab * dim, -2.0f, 2.0f, 1, &table, &table_f);
    std::vector<int32_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 37 + 5) % vocab);
    DeviceBuffer<T> d_table(table), d_out(n * dim);
    DeviceBuffer<int32_t> d_ids(ids);
    EmbeddingParams<T> p{d_table.get(), d_ids.get(), d_out.get(), n, dim, vocab};
    ASSERT_EQ(LaunchEmbedding(p, nullptr), cudaSuccess);
    std::vector<float> ref(n * dim);
    ref::Embedding(table_f.data(), ids.data(), n, dim, ref.data());
    ExpectClose(ToFloatVec(d_out.Download()), ref, 0.0f, 0.0f,
                "embedding dim " + std::to_string(dim));
  }
}

TYPED_TEST(ElementwiseTest, RmsNormWithResidualMatchesReference) {
  using T = TypeParam;
  for (int64_t dim : {37, 1002, 4096}) {
    for (bool with_residual : {false, true}) {
      const int64_t n = 7;
      std::vector<T> x, res, w;
      std::vector<float> x_f, res_f, w_f;
      RandomRounded<T>(n * dim, -3.0f, 3.0f, 2, &x, &x_f);
      RandomRounded<T>(n * dim, -1.0f, 1.0f, 3, &res, &res_f);
      RandomRounded<T>(dim, 0.5f, 1.5f, 4, &w, &w_f);
      DeviceBuffer<T> d_x(x), d_res(res), d_w(w), d_out(n * dim);
      RmsNormParams<T> p;
      p.x = d_x.get();
      p.residual = with_residual ? d_res.get() : nullptr;
      p.weight = d_w.get();
      p.out = d_out.get();
      p.n = n;
      p.dim = dim;
      p.eps = 1e-5f;
      ASSERT_EQ(LaunchRmsNorm(p, nullptr), cudaSuccess);
      const std::vector<float> x_after = ToFloatVec(d_x.Download());
      std::vector<float> expect_x = x_f;
      if (with_residual) {
        for (size_t i = 0; i < expect_x.size(); ++i) expect_x[i] = ToF(FromF<T>(x_f[i] + res_f[i]));
      }
      ExpectClose(x_after, expect_x, 0.0f, 0.0f, "rmsnorm residual sum");
      std::vector<float> ref(n * dim);
      ref::RmsNorm(expect_x.data(), w_f.data(), n, dim, 1e-5f, ref.data());
      ExpectCloseT(d_out.Download(), ref, "rmsnorm dim " + std::to_string(dim));
    }
  }
}

TYPED_TEST(ElementwiseTest, RopeMatchesReference) {
  using T = TypeParam;
  for (int head_dim : {64, 128}) {
    const int64_t n = 17;
    const int heads = 8, kv_heads = 2;
    std::vector<T> q, k;
    std::vector<float> q_f, k_f;
    RandomRounded<T>(n * heads * head_dim, -1.0f, 1.0f, 5, &q, &q_f);
    RandomRounded<T>(n * kv_heads * head_dim, -1.0f, 1.0f, 6, &k, &k_f);
    std::vector<int32_t> pos(n);
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(i * 613 % 8191);
    std::vector<float> inv_freq(head_dim / 2);
    for (int j = 0; j < head_dim / 2; ++j) {
      inv_freq[j] = 1.0f / std::pow(500000.0f, 2.0f * j / head_dim);
    }
    DeviceBuffer<T> d_q(q), d_k(k);
    DeviceBuffer<int32_t> d_pos(pos);
    DeviceBuffer<float> d_freq(inv_freq);
    RopeParams<T> p;
    p.q = d_q.get();
    p.k = d_k.get();
    p.positions = d_pos.get();
    p.inv_freq = d_freq.get();
    p.n = n;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.head_dim = head_dim;
    ASSERT_EQ(LaunchRope(p, nullptr), cudaSuccess);
    ref::Rope(q_f.data(), pos.data(), inv_freq.data(), n, heads, head_dim);
    ref::Rope(k_f.data(), pos.data(), inv_freq.data(), n, kv_heads, head_dim);
    // Large angles: cos/sin of GPU and glibc differ by an ulp or two.
    ExpectCloseT(d_q.Download(), q_f, "rope q", 5.0f);
    ExpectCloseT(d_k.Download(), k_f, "rope k", 5.0f);
  }
}

TYPED_TEST(ElementwiseTest, SwiGluMatchesReference) {
  using T = TypeParam;
  for (int64_t f : {37, 1002}) {
    const int64_t n = 5;
    std::vector<T> gu;  // fused [n, 2f]: gate then up
    std::vector<float> gu_f;
    RandomRounded<T>(n * 2 * f, -6.0f, 6.0f, 7, &gu, &gu_f);
    DeviceBuffer<T> d_gu(gu), d_out(n * f);
    SwiGluParams<T> p{d_gu.get(), d_gu.get() + f, d_out.get(), n, f, 2 * f};
    ASSERT_EQ(LaunchSwiGlu(p, nullptr), cudaSuccess);
    std::vector<float> gate(n * f), up(n * f), ref(n * f);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(&gate[i * f], &gu_f[i * 2 * f], f * sizeof(float));
      std::memcpy(&up[i * f], &gu_f[i * 2 * f + f], f * sizeof(float));
    }
    ref::SwiGlu(gate.data(), up.data(), n, f, ref.data());
    ExpectCloseT(d_out.Download(), ref, "swiglu f " + std::to_string(f));
  }
}

TYPED_TEST(ElementwiseTest, ArgmaxTiesAndNaN) {
  using T = TypeParam;
  const int64_t vocab = 50257, rows = 4;
  std::vector<T> logits;
  std::vector<float> f;
  RandomRounded<T>(rows * vocab, -5.0f, 5.0f, 8, &logits, &f);
  // Row 1: a tie between 300 and 40000 -> 300. Row 2: NaN everywhere but 7. Row 3: all NaN.
  logits[1 * vocab + 300] = logits[1 * vocab + 40000] = FromF<T>(100.0f);
  for (int64_t i = 0; i < vocab; ++i) {
    logits[2 * vocab + i] = FromF<T>(i == 7 ? -1.0f : std::numeric_limits<float>::quiet_NaN());
    logits[3 * vocab + i] = FromF<T>(std::numeric_limits<float>::quiet_NaN());
  }
  DeviceBuffer<T> d_logits(logits);
  DeviceBuffer<int32_t> d_out(rows);
  ArgmaxParams<T> p{d_logits.get(), d_out.get(), rows, vocab};
  ASSERT_EQ(LaunchArgmax(p, nullptr), cudaSuccess);
  const std::vector<int32_t> got = d_out.Download();
  int32_t expect0 = 0;
  for (int64_t i = 1; i < vocab; ++i) {
    if (ToF(logits[i]) > ToF(logits[expect0])) expect0 = static_cast<int32_t>(i);
  }
  EXPECT_EQ(got[0], expect0);
  EXPECT_EQ(got[1], 300);
  EXPECT_EQ(got[2], 7);
  EXPECT_EQ(got[3], 0);
}

TYPED_TEST(ElementwiseTest, KvWriteFillsPages) {
  using T = TypeParam;
  for (int page_size : {1, 16}) {
    const int kv_heads = 2, head_dim = 64, layers = 2, layer = 1;
    const int num_blocks = page_size == 1 ? 32 : 9;  // enough slots that no two tokens collide
    const int64_t n = 21, row = int64_t{kv_heads} * head_dim;
    std::vector<T> k, v;
    std::vector<float> k_f, v_f;
    RandomRounded<T>(n * row, -1.0f, 1.0f, 9, &k, &k_f);
    RandomRounded<T>(n * row, -1.0f, 1.0f, 10, &v, &v_f);
    const int64_t page_elems = 2 * int64_t{page_size} * row;
    std::vector<T> cache(layers * num_blocks * page_elems, FromF<T>(0.0f));
    std::vector<int64_t> slots(n);
    for (int64_t i = 0; i < n; ++i) {
      slots[i] = i == 3 ? -1 : (i * 7) % (int64_t{num_blocks} * page_size);
    }
    DeviceBuffer<T> d_k(k), d_v(v), d_cache(cache);
    DeviceBuffer<int64_t> d_slots(slots);
    KvWriteParams<T> p;
    p.cache = PagedKv<T>{d_cache.get(), layer, num_blocks, page_size, kv_heads, head_dim};
    p.k = d_k.get();
    p.v = d_v.get();
    p.slot_mapping = d_slots.get();
    p.n = n;
    ASSERT_EQ(LaunchKvWrite(p, nullptr), cudaSuccess);
    std::vector<float> expect = ToFloatVec(cache);
    for (int64_t i = 0; i < n; ++i) {
      if (slots[i] < 0) continue;
      const int64_t block = slots[i] / page_size, slot = slots[i] % page_size;
      const int64_t page = (int64_t{layer} * num_blocks + block) * page_elems;
      for (int64_t e = 0; e < row; ++e) {
        expect[page + slot * row + e] = k_f[i * row + e];
        expect[page + int64_t{page_size} * row + slot * row + e] = v_f[i * row + e];
      }
    }
    ExpectClose(ToFloatVec(d_cache.Download()), expect, 0.0f, 0.0f,
                "kv write page_size " + std::to_string(page_size));
  }
}

}  // namespace
}  // namespace tandem::cuda::testing
