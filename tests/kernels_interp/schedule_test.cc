// Schedule modes: our kernels give bit-identical results whatever order the fibers of a block
// (and the blocks of a grid) run in; a kernel missing a barrier does not.
#include "tandem/kernels/interp/cuda_interp.h"  // first: defines __shared__ before CUDA headers

#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "tandem/kernels/cuda/argmax.h"
#include "tandem/kernels/cuda/decode_attention.h"
#include "tandem/kernels/cuda/prefill_attention.h"
#include "tandem/kernels/cuda/rmsnorm.h"
#include "tandem/kernels/cuda/sampling.h"

namespace tandem::interp::testing {
namespace {

using cuda::testing::DeviceBuffer;

struct Mode {
  Schedule schedule;
  uint64_t seed;
  const char* name;
};
const Mode kModes[] = {{Schedule::kForward, 1, "forward"},
                       {Schedule::kReverse, 1, "reverse"},
                       {Schedule::kRandom, 1, "random:1"},
                       {Schedule::kRandom, 12345, "random:12345"}};

// Runs `run` (which returns the output bytes) under every mode; all must equal forward's.
void ExpectScheduleInvariant(const std::function<std::vector<char>()>& run, const char* what) {
  const Schedule saved = CurrentSchedule();
  std::vector<char> first;
  for (const Mode& m : kModes) {
    SetSchedule(m.schedule, m.seed);
    const std::vector<char> got = run();
    if (first.empty()) {
      first = got;
      ASSERT_FALSE(first.empty());
    } else {
      EXPECT_TRUE(got == first) << what << " differs under schedule " << m.name;
    }
  }
  SetSchedule(saved, 1);
}

template <typename T>
std::vector<char> Bytes(const std::vector<T>& v) {
  std::vector<char> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<float> Random(size_t n, uint32_t seed, float lo = -2.0f, float hi = 2.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

TEST(InterpSchedule, RmsNormAndArgmaxAreScheduleInvariant) {
  const int64_t n = 3, dim = 1002;
  const std::vector<float> x = Random(n * dim, 1), w = Random(dim, 2, 0.5f, 1.5f);
  ExpectScheduleInvariant(
      [&] {
        DeviceBuffer<float> d_x(x), d_w(w), d_out(n * dim);
        cuda::RmsNormParams<float> p;
        p.x = d_x.get();
        p.weight = d_w.get();
        p.out = d_out.get();
        p.n = n;
        p.dim = dim;
        EXPECT_EQ(cuda::LaunchRmsNorm(p, nullptr), cudaSuccess);
        DeviceBuffer<int32_t> d_arg(n);
        EXPECT_EQ(
            cuda::LaunchArgmax(cuda::ArgmaxParams<float>{d_x.get(), d_arg.get(), n, dim}, nullptr),
            cudaSuccess);
        std::vector<char> b = Bytes(d_out.Download());
        const std::vector<char> a = Bytes(d_arg.Download());
        b.insert(b.end(), a.begin(), a.end());
        return b;
      },
      "rmsnorm + argmax");
}

TEST(InterpSchedule, AttentionIsScheduleInvariant) {
  // group 5: the four warps own 2, 1, 1, 1 rows (unequal trip counts); window cuts tiles.
  const int kv_heads = 1, heads = 5, head_dim = 64, page = 16;
  const std::vector<int32_t> lens = {37, 70};
  const int max_blocks = 5, num_blocks = 10;
  std::vector<int32_t> tables(2 * max_blocks);
  for (int i = 0; i < 2 * max_blocks; ++i) tables[i] = (i * 3) % num_blocks;
  const std::vector<float> cache = Random(size_t(num_blocks) * 2 * page * kv_heads * head_dim, 3);
  const std::vector<float> q = Random(size_t(70 + 37) * heads * head_dim, 4);
  for (int window : {0, 20}) {
    ExpectScheduleInvariant(
        [&] {
          DeviceBuffer<float> d_cache(cache), d_q(q), d_out(2 * heads * head_dim);
          DeviceBuffer<float> d_pout(size_t(70 + 37) * heads * head_dim);
          DeviceBuffer<int32_t> d_tables(tables), d_lens(lens);
          DeviceBuffer<int32_t> d_indptr(std::vector<int32_t>{0, 37, 107});
          cuda::PagedKv<float> kv{d_cache.get(), 0, num_blocks, page, kv_heads, head_dim};
          cuda::DecodeAttentionParams<float> p;
          p.q = d_q.get();
          p.out = d_out.get();
          p.cache = kv;
          p.tables = cuda::BlockTables{d_tables.get(), max_blocks};
          p.seq_lens = d_lens.get();
          p.batch = 2;
          p.heads = heads;
          p.max_seq_len = 70;
          p.window = window;
          p.scale = 0.125f;
          const size_t ws = cuda::DecodeAttentionWorkspaceBytes(p);
          DeviceBuffer<float> d_ws(ws / sizeof(float) + 1);
          p.workspace = d_ws.get();
          p.workspace_bytes = ws;
          EXPECT_EQ(cuda::LaunchDecodeAttention(p, nullptr), cudaSuccess);
          cuda::PrefillAttentionParams<float> pp;
          pp.q = d_q.get();
          pp.out = d_pout.get();
          pp.cache = kv;
          pp.tables = p.tables;
          pp.q_indptr = d_indptr.get();
          pp.kv_lens = d_lens.get();
          pp.batch = 2;
          pp.heads = heads;
          pp.max_q_len = 70;
          pp.window = window;
          pp.scale = 0.125f;
          EXPECT_EQ(cuda::LaunchPrefillAttention(pp, nullptr), cudaSuccess);
          std::vector<char> b = Bytes(d_out.Download());
          const std::vector<char> c = Bytes(d_pout.Download());
          b.insert(b.end(), c.begin(), c.end());
          return b;
        },
        window == 0 ? "attention" : "attention window 20");
  }
}

TEST(InterpSchedule, SamplingIsScheduleInvariant) {
  const int64_t rows = 4, vocab = 1003;
  const std::vector<float> logits = Random(rows * vocab, 5, -4.0f, 4.0f);
  std::vector<cuda::SampleRowParams> rp(rows);
  rp[0].temperature = 0.0f;
  rp[0].repetition_penalty = 1.2f;
  rp[1].top_k = 40;
  rp[1].presence_penalty = 0.3f;
  rp[1].frequency_penalty = 0.2f;
  rp[2].top_p = 0.8f;
  rp[2].temperature = 0.7f;
  rp[3].min_p = 0.05f;
  for (int64_t r = 0; r < rows; ++r) rp[r].seed = 7 + r, rp[r].position = 3 * r;
  const std::vector<int32_t> history = {1, 5, 5, 9, 5, 7, 7, 7, 2, 3, 3, 1, 0};
  const std::vector<int64_t> offsets = {0, 3, 8, 10, 12};
  const std::vector<int32_t> prompt_lens = {1, 2, 1, 1};
  ExpectScheduleInvariant(
      [&] {
        DeviceBuffer<float> d_logits(logits), d_lp(rows);
        DeviceBuffer<cuda::SampleRowParams> d_rp(rp);
        DeviceBuffer<int32_t> d_hist(history), d_pl(prompt_lens), d_tok(rows);
        DeviceBuffer<int64_t> d_off(offsets);
        size_t ws = 0;
        EXPECT_EQ(cuda::SampleWorkspaceBytes(rows, vocab, &ws), cudaSuccess);
        DeviceBuffer<char> d_ws(ws);
        cuda::SampleParams p;
        p.logits = d_logits.get();
        p.row_params = d_rp.get();
        p.history = d_hist.get();
        p.history_offsets = d_off.get();
        p.prompt_lens = d_pl.get();
        p.out_tokens = d_tok.get();
        p.out_logprobs = d_lp.get();
        p.rows = rows;
        p.vocab = vocab;
        p.workspace = d_ws.get();
        p.workspace_bytes = ws;
        EXPECT_EQ(cuda::LaunchSample(p, nullptr), cudaSuccess);
        std::vector<char> b = Bytes(d_tok.Download());
        const std::vector<char> c = Bytes(d_lp.Download());
        b.insert(b.end(), c.begin(), c.end());
        return b;
      },
      "sampling");
}

// Negative control: each thread publishes a value and reads its neighbour's without the
// __syncthreads in between. Forward order reads stale values, reverse order fresh ones.
__global__ void MissingBarrier(int* out) {
  __shared__ int buf[128];
  buf[threadIdx.x] = static_cast<int>(blockIdx.x * 1000 + threadIdx.x);
  // __syncthreads();   <- missing
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
}

__global__ void WithBarrier(int* out) {
  __shared__ int buf[128];
  buf[threadIdx.x] = static_cast<int>(blockIdx.x * 1000 + threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[(threadIdx.x + 1) % blockDim.x];
}

std::vector<int> RunNeighbour(void (*kernel)(int*), Schedule s, uint64_t seed) {
  SetSchedule(s, seed);
  DeviceBuffer<int> out(3 * 128);
  Launch("neighbour", kernel, 3, 128, 0, nullptr, out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return out.Download();
}

TEST(InterpSchedule, MissingBarrierIsCaught) {
  const Schedule saved = CurrentSchedule();
  const std::vector<int> fwd = RunNeighbour(MissingBarrier, Schedule::kForward, 1);
  const std::vector<int> rev = RunNeighbour(MissingBarrier, Schedule::kReverse, 1);
  const std::vector<int> rnd = RunNeighbour(MissingBarrier, Schedule::kRandom, 3);
  EXPECT_NE(fwd, rev);
  EXPECT_NE(fwd, rnd);
  const std::vector<int> good = RunNeighbour(WithBarrier, Schedule::kForward, 1);
  EXPECT_EQ(RunNeighbour(WithBarrier, Schedule::kReverse, 1), good);
  EXPECT_EQ(RunNeighbour(WithBarrier, Schedule::kRandom, 3), good);
  SetSchedule(saved, 1);
}

}  // namespace
}  // namespace tandem::interp::testing
