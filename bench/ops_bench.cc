// The CPU engine's non-GEMM ops on SmolLM2-135M's shapes (9 query heads over 3 KV heads of 64,
// 16-token pages, intermediate 1536): paged attention for a decode batch (n sequences, one row
// each, every sequence `context` tokens deep in its own pages) and for a prefill (one sequence,
// `prefill` rows), and SwiGlu over n and `prefill` rows, per call and per step of 30 layers.
// Prints a hash of every output too, so a change that should keep the arithmetic can be
// checked for identical bits (run before and after; the hashes must agree).
//
//   ops_bench [--threads 2] [--reps 20] [--context 128] [--prefill 128] [--batches 1,8,32]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/kv_cache.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int64_t kHeads = 9, kKvHeads = 3, kHeadDim = 64, kPage = 16, kInter = 1536, kLayers = 30;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

uint64_t Hash(const std::vector<float>& v, uint64_t h = 1469598103934665603ull) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

template <typename F>
double MedianSeconds(int reps, F&& f) {
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// `seqs` sequences of `len` tokens each in their own (scattered) pages; rows are the last
// `rows_per_seq` positions of each sequence.
struct AttentionCase {
  KvCache cache;
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> positions;
  std::vector<const int32_t*> row_tables;
  std::vector<float> q, out;

  AttentionCase(int64_t seqs, int64_t len, int64_t rows_per_seq)
      : cache(KvGeometry{1, static_cast<int32_t>(kKvHeads), static_cast<int32_t>(kHeadDim),
                         static_cast<int32_t>(kPage)},
              static_cast<int32_t>(seqs * ((len + kPage - 1) / kPage) + 1)) {
    tables.resize(seqs);
    for (int64_t s = 0; s < seqs; ++s) {
      auto b = cache.allocator().Allocate(cache.BlocksFor(len));
      tables[s].assign(b->rbegin(), b->rend());
      auto k = Random(len * kKvHeads * kHeadDim, 100 + s),
           v = Random(len * kKvHeads * kHeadDim, 200 + s);
      std::vector<int32_t> pos(len);
      for (int64_t i = 0; i < len; ++i) pos[i] = static_cast<int32_t>(i);
      std::vector<const int32_t*> tab(len, tables[s].data());
      cpu::WriteKv(cache, 0, k.data(), v.data(), pos.data(), tab.data(), len);
      for (int64_t i = len - rows_per_seq; i < len; ++i) {
        positions.push_back(static_cast<int32_t>(i));
        row_tables.push_back(tables[s].data());
      }
    }
    q = Random(positions.size() * kHeads * kHeadDim, 7);
    out.assign(q.size(), 0.0f);
  }
  void Run() {
    cpu::PagedAttention(cache, 0, q.data(), positions.data(), row_tables.data(),
                        static_cast<int64_t>(positions.size()), kHeads, 0,
                        1.0f / std::sqrt(static_cast<float>(kHeadDim)), out.data());
  }
};

int Main(int argc, char** argv) {
  CLI::App app{"CPU engine ops (attention, SwiGlu) on SmolLM2-135M shapes"};
  int threads = 2, reps = 20;
  int64_t context = 128, prefill = 128;
  std::vector<int64_t> batches = {1, 8, 32};
  app.add_option("--threads", threads);
  app.add_option("--reps", reps);
  app.add_option("--context", context, "decode rows' context");
  app.add_option("--prefill", prefill, "prefill rows (one sequence)");
  app.add_option("--batches", batches)->delimiter(',');
  CLI11_PARSE(app, argc, argv);
  cpu::SetNumThreads(threads);
  std::printf("%d threads, median of %d; per step = 30 layers\n", threads, reps);
  std::printf("%-28s %10s %12s  %s\n", "op", "us/call", "ms/step", "output hash");
  auto report = [&](const char* what, long long rows, double s, uint64_t h) {
    char name[64];
    std::snprintf(name, sizeof(name), "%s %lld", what, rows);
    std::printf("%-28s %10.1f %12.3f  %016llx\n", name, s * 1e6, s * kLayers * 1e3,
                static_cast<unsigned long long>(h));
  };
  for (int64_t b : batches) {
    AttentionCase a(b, context + 1, 1);
    const double s = MedianSeconds(reps, [&] { a.Run(); });
    report("attention decode rows", b, s, Hash(a.out));
  }
  {
    AttentionCase a(1, prefill, prefill);
    const double s = MedianSeconds(reps, [&] { a.Run(); });
    report("attention prefill rows", prefill, s, Hash(a.out));
  }
  std::vector<int64_t> rows = batches;
  rows.push_back(prefill);
  for (int64_t n : rows) {
    auto g = Random(n * kInter, 3), u = Random(n * kInter, 4);
    for (auto& x : g) x *= 3.0f;
    std::vector<float> o(g.size());
    const double s =
        MedianSeconds(reps, [&] { cpu::SwiGlu(g.data(), u.data(), n, kInter, o.data()); });
    report("swiglu rows", n, s, Hash(o));
  }
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
