// The CPU GEMM per weight storage on SmolLM2-135M's shapes (hidden 576, intermediate 1536,
// 30 layers of q/k/v/o/gate/up/down, plus the 49,152-row LM head): the time of one decode
// step's GEMMs at batch n = 1, 8, 32, and of a 128-row prefill (every layer at n = 128, the head
// at n = 1), for f32 / bf16 / q8_0 / q4_0 / q4_1, with the weight bytes streamed per second and
// the rate in rows (tokens) per second, each against f32. Random weights; the best of --reps
// (on a shared machine the minimum is the least disturbed figure) and the median.
//
//   gemm_bench [--threads 2] [--reps 7] [--storages f32,bf16,q8_0,q4_0,q4_1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tandem/kernels/cpu/gemm.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::cpu::Gemm;
using kernels::cpu::PackedWeight;

constexpr int64_t kHidden = 576, kInter = 1536, kKv = 192, kLayers = 30, kVocab = 49152;

struct Linear {
  int64_t m, k;
};
const std::vector<Linear> kLayer = {{kHidden, kHidden}, {kKv, kHidden},    {kKv, kHidden},
                                    {kHidden, kHidden}, {kInter, kHidden}, {kInter, kHidden},
                                    {kHidden, kInter}};

struct Model {
  std::vector<PackedWeight> layers;  // kLayers * 7
  PackedWeight head;
  int64_t bytes = 0;
};

Model Build(DType storage) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> w;
  auto pack = [&](int64_t m, int64_t k) {
    w.resize(static_cast<size_t>(m * k));
    for (auto& v : w) v = nd(rng);
    return PackedWeight::Pack(w.data(), m, k, storage);
  };
  Model model;
  for (int64_t l = 0; l < kLayers; ++l) {
    for (const Linear& lin : kLayer) model.layers.push_back(pack(lin.m, lin.k));
  }
  model.head = pack(kVocab, kHidden);
  for (const auto& p : model.layers) model.bytes += p.bytes();
  model.bytes += model.head.bytes();
  return model;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Min(const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); }

// Seconds of one pass over every GEMM: layers at n rows, the head at head_rows.
double Step(const Model& model, int64_t n, int64_t head_rows, const std::vector<float>& x,
            std::vector<float>& out, int threads) {
  const auto t0 = Clock::now();
  for (const PackedWeight& w : model.layers) Gemm(x.data(), n, w, nullptr, out.data(), threads);
  Gemm(x.data(), head_rows, model.head, nullptr, out.data(), threads);
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"CPU GEMM per weight storage on SmolLM2-135M shapes"};
  int threads = 2, reps = 7;
  std::string storages = "f32,bf16,q8_0,q4_0,q4_1";
  app.add_option("--threads", threads, "OpenMP threads per GEMM");
  app.add_option("--reps", reps, "repetitions (median)");
  app.add_option("--storages", storages, "comma-separated weight storages");
  CLI11_PARSE(app, argc, argv);

  std::printf("SIMD target %s, %d threads, best (and median) of %d\n",
              std::string(kernels::cpu::GemmTarget()).c_str(), threads, reps);
  std::printf("%-6s %9s %5s %10s %8s %10s %8s\n", "store", "MB", "n", "ms/step", "GB/s", "rows/s",
              "vs f32");
  const std::vector<float> x = [] {
    std::mt19937 rng(2);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(128 * kInter);
    for (auto& f : v) f = nd(rng);
    return v;
  }();
  std::vector<float> out(128 * kVocab);
  std::map<int64_t, double> f32_rate;
  size_t at = 0;
  while (at <= storages.size()) {
    const size_t comma = std::min(storages.find(',', at), storages.size());
    const std::string name = storages.substr(at, comma - at);
    at = comma + 1;
    auto storage = kernels::cpu::ParseWeightStorage(name);
    if (!storage.ok()) {
      std::fprintf(stderr, "%s\n", storage.status().message().c_str());
      return 2;
    }
    const Model model = Build(*storage);
    for (int64_t n : {1, 8, 32, 128}) {
      const int64_t head_rows = n == 128 ? 1 : n;
      Step(model, n, head_rows, x, out, threads);  // warm up
      std::vector<double> t;
      for (int r = 0; r < (n == 128 ? std::max(3, reps / 2) : reps); ++r) {
        t.push_back(Step(model, n, head_rows, x, out, threads));
      }
      const double s = Min(t), rate = static_cast<double>(n) / s;
      if (*storage == DType::kF32) f32_rate[n] = rate;
      std::printf("%-6s %9.1f %5lld %10.2f %10.2f %8.2f %10.1f %8.2f\n", name.c_str(),
                  model.bytes / 1e6, static_cast<long long>(n), s * 1e3, Median(t) * 1e3,
                  model.bytes / s / 1e9, rate, f32_rate.count(n) ? rate / f32_rate[n] : 0.0);
      std::fflush(stdout);
    }
  }
  return 0;
}
