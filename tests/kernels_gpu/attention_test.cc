// Prefill and decode attention over the paged cache against tandem::ref::Attention, plus the
// chunking and batch invariance they promise.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "gpu_test_util.h"
#include "tandem/kernels/cuda/decode_attention.h"
#include "tandem/kernels/cuda/prefill_attention.h"
#include "tandem/kernels/ref/ops.h"

namespace tandem::cuda::testing {
namespace {

// A batch of sequences in a paged cache (blocks handed out in a shuffled order), with the
// dense per-sequence K/V the reference reads.
template <typename T>
struct PagedBatch {
  int kv_heads, head_dim, page_size, num_blocks, max_blocks;
  std::vector<int32_t> kv_lens;
  std::vector<std::vector<float>> k, v;  // per sequence [kv_len, kv_heads, head_dim]
  std::vector<int32_t> tables;           // [batch, max_blocks]
  std::vector<T> cache;                  // [2 layers, num_blocks, 2, page_size, kv_heads, hd]
  static constexpr int kLayer = 1;

  PagedBatch(const std::vector<int32_t>& lens, int kv_heads_, int head_dim_, int page_size_,
             uint32_t seed)
      : kv_heads(kv_heads_), head_dim(head_dim_), page_size(page_size_), kv_lens(lens) {
    max_blocks = 1;
    int total_blocks = 0;
    for (int32_t len : lens) {
      const int blocks = (len + page_size - 1) / page_size;
      max_blocks = std::max(max_blocks, blocks);
      total_blocks += blocks;
    }
    num_blocks = total_blocks + 3;
    std::vector<int32_t> order(num_blocks);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(seed));
    const int64_t row = int64_t{kv_heads} * head_dim;
    const int64_t page_elems = 2 * int64_t{page_size} * row;
    cache.assign(2 * int64_t{num_blocks} * page_elems, FromF<T>(0.0f));
    tables.assign(lens.size() * max_blocks, 0);
    int next = 0;
    for (size_t b = 0; b < lens.size(); ++b) {
      std::vector<T> kt, vt;
      std::vector<float> kf, vf;
      RandomRounded<T>(lens[b] * row, -1.5f, 1.5f, seed + 11 * b + 1, &kt, &kf);
      RandomRounded<T>(lens[b] * row, -1.0f, 1.0f, seed + 11 * b + 2, &vt, &vf);
      for (int p = 0; p < lens[b]; ++p) {
        if (p % page_size == 0) tables[b * max_blocks + p / page_size] = order[next++];
        const int64_t block = tables[b * max_blocks + p / page_size];
        const int64_t base = (int64_t{kLayer} * num_blocks + block) * page_elems;
        for (int64_t e = 0; e < row; ++e) {
          cache[base + (p % page_size) * row + e] = kt[p * row + e];
          cache[base + int64_t{page_size} * row + (p % page_size) * row + e] = vt[p * row + e];
        }
      }
      k.push_back(kf);
      v.push_back(vf);
    }
  }
};

template <typename T>
class AttentionTest : public GpuTest {};
TYPED_TEST_SUITE(AttentionTest, DTypes);

// Runs prefill for the last q_lens[b] tokens of each sequence; returns out as float.
template <typename T>
std::vector<float> RunPrefill(const PagedBatch<T>& pb, const std::vector<int32_t>& q_lens,
                              const std::vector<T>& q, int heads, int window) {
  std::vector<int32_t> indptr(q_lens.size() + 1, 0);
  for (size_t b = 0; b < q_lens.size(); ++b) indptr[b + 1] = indptr[b] + q_lens[b];
  DeviceBuffer<T> d_cache(pb.cache), d_q(q), d_out(size_t(indptr.back()) * heads * pb.head_dim);
  DeviceBuffer<int32_t> d_tables(pb.tables), d_indptr(indptr), d_lens(pb.kv_lens);
  PrefillAttentionParams<T> p;
  p.q = d_q.get();
  p.out = d_out.get();
  p.cache = PagedKv<T>{d_cache.get(), PagedBatch<T>::kLayer, pb.num_blocks,
                       pb.page_size,  pb.kv_heads,           pb.head_dim};
  p.tables = BlockTables{d_tables.get(), pb.max_blocks};
  p.q_indptr = d_indptr.get();
  p.kv_lens = d_lens.get();
  p.batch = static_cast<int32_t>(q_lens.size());
  p.heads = heads;
  p.max_q_len = *std::max_element(q_lens.begin(), q_lens.end());
  p.window = window;
  p.scale = 1.0f / std::sqrt(static_cast<float>(pb.head_dim));
  EXPECT_EQ(LaunchPrefillAttention(p, nullptr), cudaSuccess);
  return ToFloatVec(d_out.Download());
}

TYPED_TEST(AttentionTest, PrefillMatchesReference) {
  using T = TypeParam;
  const std::vector<int32_t> kv_lens = {17, 300, 1};
  const std::vector<int32_t> q_lens = {17, 45, 1};  // sequence 1 is a later chunk
  for (int head_dim : {64, 128}) {
    for (int page_size : {1, 16}) {
      for (int group : {1, 4, 8}) {
        for (int window : {0, 37}) {
          const int kv_heads = 2, heads = kv_heads * group;
          PagedBatch<T> pb(kv_lens, kv_heads, head_dim, page_size, 100 + group);
          int total_q = 0;
          for (int32_t l : q_lens) total_q += l;
          std::vector<T> q;
          std::vector<float> q_f;
          RandomRounded<T>(size_t(total_q) * heads * head_dim, -1.5f, 1.5f, 7, &q, &q_f);
          const std::vector<float> got = RunPrefill(pb, q_lens, q, heads, window);
          std::vector<float> ref(got.size());
          int off = 0;
          for (size_t b = 0; b < kv_lens.size(); ++b) {
            std::vector<int32_t> q_pos(q_lens[b]);
            for (int i = 0; i < q_lens[b]; ++i) q_pos[i] = kv_lens[b] - q_lens[b] + i;
            const int64_t at = int64_t{off} * heads * head_dim;
            ref::Attention(q_f.data() + at, pb.k[b].data(), pb.v[b].data(), q_pos.data(), q_lens[b],
                           kv_lens[b], heads, kv_heads, head_dim, window,
                           1.0f / std::sqrt(static_cast<float>(head_dim)), ref.data() + at);
            off += q_lens[b];
          }
          ExpectClose(got, ref, Tol<T>::kAtol * 2, Tol<T>::kRtol * 2,
                      "prefill hd " + std::to_string(head_dim) + " page " +
                          std::to_string(page_size) + " group " + std::to_string(group) +
                          " window " + std::to_string(window));
        }
      }
    }
  }
}

TYPED_TEST(AttentionTest, ChunkedPrefillIsBitIdenticalToOneShot) {
  using T = TypeParam;
  const int kv_heads = 2, heads = 8, head_dim = 128;
  PagedBatch<T> pb({300}, kv_heads, head_dim, 16, 5);
  std::vector<T> q;
  std::vector<float> q_f;
  RandomRounded<T>(300 * heads * head_dim, -1.5f, 1.5f, 9, &q, &q_f);
  const std::vector<float> whole = RunPrefill(pb, {300}, q, heads, 0);
  // Second chunk only: the last 123 tokens, with all 300 in the cache.
  PagedBatch<T> tail = pb;
  const size_t skip = size_t(300 - 123) * heads * head_dim;
  const std::vector<T> q_tail(q.begin() + skip, q.end());
  const std::vector<float> part = RunPrefill(tail, {123}, q_tail, heads, 0);
  ASSERT_EQ(part.size(), whole.size() - skip);
  for (size_t i = 0; i < part.size(); ++i) ASSERT_EQ(part[i], whole[skip + i]) << "element " << i;
}

// Decode: one query per sequence at position seq_len - 1.
template <typename T>
std::vector<float> RunDecode(const PagedBatch<T>& pb, const std::vector<T>& q, int heads,
                             int window, bool deterministic) {
  const int batch = static_cast<int>(pb.kv_lens.size());
  DeviceBuffer<T> d_cache(pb.cache), d_q(q), d_out(size_t(batch) * heads * pb.head_dim);
  DeviceBuffer<int32_t> d_tables(pb.tables), d_lens(pb.kv_lens);
  DecodeAttentionParams<T> p;
  p.q = d_q.get();
  p.out = d_out.get();
  p.cache = PagedKv<T>{d_cache.get(), PagedBatch<T>::kLayer, pb.num_blocks,
                       pb.page_size,  pb.kv_heads,           pb.head_dim};
  p.tables = BlockTables{d_tables.get(), pb.max_blocks};
  p.seq_lens = d_lens.get();
  p.batch = batch;
  p.heads = heads;
  p.max_seq_len = *std::max_element(pb.kv_lens.begin(), pb.kv_lens.end());
  p.window = window;
  p.scale = 1.0f / std::sqrt(static_cast<float>(pb.head_dim));
  p.deterministic = deterministic;
  p.deterministic_chunk = 256;
  const size_t ws_bytes = DecodeAttentionWorkspaceBytes(p);
  DeviceBuffer<float> d_ws(ws_bytes / sizeof(float) + 1);
  p.workspace = d_ws.get();
  p.workspace_bytes = ws_bytes;
  EXPECT_EQ(LaunchDecodeAttention(p, nullptr), cudaSuccess);
  return ToFloatVec(d_out.Download());
}

TYPED_TEST(AttentionTest, DecodeMatchesReference) {
  using T = TypeParam;
  const std::vector<int32_t> lens = {1, 17, 300, 5000};
  for (int head_dim : {64, 128}) {
    for (int page_size : {1, 16}) {
      for (int group : {1, 4, 8}) {
        for (int window : {0, 100}) {
          for (bool deterministic : {false, true}) {
            const int kv_heads = 2, heads = kv_heads * group, batch = 4;
            PagedBatch<T> pb(lens, kv_heads, head_dim, page_size, 200 + group);
            std::vector<T> q;
            std::vector<float> q_f;
            RandomRounded<T>(size_t(batch) * heads * head_dim, -1.5f, 1.5f, 3, &q, &q_f);
            const std::vector<float> got = RunDecode(pb, q, heads, window, deterministic);
            std::vector<float> ref(got.size());
            for (int b = 0; b < batch; ++b) {
              const int32_t pos = lens[b] - 1;
              const int64_t at = int64_t{b} * heads * head_dim;
              ref::Attention(q_f.data() + at, pb.k[b].data(), pb.v[b].data(), &pos, 1, lens[b],
                             heads, kv_heads, head_dim, window,
                             1.0f / std::sqrt(static_cast<float>(head_dim)), ref.data() + at);
            }
            ExpectClose(got, ref, Tol<T>::kAtol * 2, Tol<T>::kRtol * 2,
                        "decode hd " + std::to_string(head_dim) + " page " +
                            std::to_string(page_size) + " group " + std::to_string(group) +
                            " window " + std::to_string(window) +
                            (deterministic ? " det" : " fast"));
          }
        }
      }
    }
  }
}

TYPED_TEST(AttentionTest, DeterministicDecodeIsBatchInvariant) {
  using T = TypeParam;
  const int kv_heads = 2, heads = 16, head_dim = 128;
  // The sequence of interest (length 5000) alone, and at index 2 of a batch of 6.
  const std::vector<int32_t> lens = {17, 300, 5000, 1, 4097, 64};
  PagedBatch<T> batch(lens, kv_heads, head_dim, 16, 42);
  std::vector<T> q;
  std::vector<float> q_f;
  RandomRounded<T>(lens.size() * heads * head_dim, -1.5f, 1.5f, 4, &q, &q_f);
  const std::vector<float> all = RunDecode(batch, q, heads, 0, /*deterministic=*/true);

  PagedBatch<T> alone = batch;  // same cache, one sequence: keep row 2 of the block table
  alone.kv_lens = {5000};
  alone.tables.assign(batch.tables.begin() + 2 * batch.max_blocks,
                      batch.tables.begin() + 3 * batch.max_blocks);
  const size_t row = size_t(heads) * head_dim;
  const std::vector<T> q_one(q.begin() + 2 * row, q.begin() + 3 * row);
  const std::vector<float> one = RunDecode(alone, q_one, heads, 0, /*deterministic=*/true);
  ASSERT_EQ(one.size(), row);
  for (size_t i = 0; i < row; ++i) ASSERT_EQ(one[i], all[2 * row + i]) << "element " << i;
}

TEST(AttentionArgs, UnsupportedHeadDimIsNotSupported) {
  // Argument checks run before any device work, so this needs no GPU.
  float dummy = 0.0f;
  int32_t idx[2] = {0, 1};
  PrefillAttentionParams<float> p;
  p.q = &dummy;
  p.out = &dummy;
  p.cache = PagedKv<float>{&dummy, 0, 1, 16, 1, 96};
  p.tables = BlockTables{idx, 1};
  p.q_indptr = idx;
  p.kv_lens = idx;
  p.batch = 1;
  p.heads = 1;
  p.max_q_len = 1;
  EXPECT_EQ(LaunchPrefillAttention(p, nullptr), cudaErrorNotSupported);
}

}  // namespace
}  // namespace tandem::cuda::testing
