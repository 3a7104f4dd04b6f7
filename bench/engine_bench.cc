// Engine throughput on this machine: prefill tokens/s (prompts of 128 and 1,024 tokens, or
// --prefill-lens) and decode tokens/s at batch 1, 8 and 32, median of --runs runs, with peak
// resident memory. bench/compare_hf.py runs the same shapes through Hugging Face transformers for
// the ratio; bench/compare_llamacpp.sh runs llama.cpp's llama-bench beside it.
//
//   engine_bench --model models/SmolLM2-135M-Instruct [--runs 5] [--threads N] [--json out.json]
//                [--weights f32|bf16] [--prefill-lens 128,512]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tandem/common/logging.h"
#include "tandem/engine/engine.h"
#include "tandem/engine/weights_flag.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Most KV blocks any timed shape held at once (set by the prefill and decode runs).
int64_t& MaxBlocksUsedRef() {
  static int64_t n = 0;
  return n;
}
int64_t MaxBlocksUsed() { return MaxBlocksUsedRef(); }
void NoteBlocksUsed(Engine& e) {
  MaxBlocksUsedRef() = std::max<int64_t>(MaxBlocksUsedRef(), e.kv_cache().allocator().num_used());
}

double PeakRssMiB() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int32_t vocab, int64_t n) {
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(n);
  for (auto& t : v) t = d(rng);
  return v;
}

// Seconds to prefill a prompt of `len` tokens: one forward pass over all of it, or with
// `chunk` > 0 consecutive forwards of at most `chunk` tokens (chunked prefill).
double PrefillSeconds(Engine& e, int64_t len, std::mt19937& rng, int64_t chunk = 0) {
  auto tokens = RandomTokens(rng, e.config().vocab_size, len);
  KvCache& cache = e.kv_cache();
  auto blocks = cache.allocator().Allocate(cache.BlocksFor(len));
  if (chunk <= 0) chunk = len;
  std::vector<float> logits;
  Status st;
  auto t0 = Clock::now();
  for (int64_t start = 0; start < len && st.ok(); start += chunk) {
    const int64_t n = std::min(chunk, len - start);
    ForwardChunk ch{std::span<const int32_t>(tokens).subspan(start, n), start, *blocks,
                    start + n == len};
    st = e.runner().Forward(std::span<const ForwardChunk>(&ch, 1), cache, &logits);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  NoteBlocksUsed(e);
  cache.allocator().Release(*blocks);
  if (!st.ok()) TLOG_ERROR("{}", st.ToString());
  return s;
}

// Seconds per decode step of `batch` sequences, each with a `context`-token prompt,
// averaged over `steps` steps.
double DecodeStepSeconds(Engine& e, int batch, int64_t context, int steps, std::mt19937& rng) {
  KvCache& cache = e.kv_cache();
  std::vector<std::vector<int32_t>> toks(batch), blocks(batch);
  std::vector<ForwardChunk> chunks(batch);
  std::vector<float> logits;
  for (int b = 0; b < batch; ++b) {
    toks[b] = RandomTokens(rng, e.config().vocab_size, context + steps);
    blocks[b] = *cache.allocator().Allocate(cache.BlocksFor(context + steps));
    chunks[b] = ForwardChunk{std::span<const int32_t>(toks[b]).first(context), 0, blocks[b], true};
  }
  (void)e.runner().Forward(chunks, cache, &logits);  // prefill, untimed
  auto t0 = Clock::now();
  for (int s = 0; s < steps; ++s) {
    for (int b = 0; b < batch; ++b) {
      chunks[b] = ForwardChunk{std::span<const int32_t>(toks[b]).subspan(context + s, 1),
                               context + s, blocks[b], true};
    }
    (void)e.runner().Forward(chunks, cache, &logits);
  }
  const double sec = std::chrono::duration<double>(Clock::now() - t0).count() / steps;
  NoteBlocksUsed(e);
  for (auto& b : blocks) cache.allocator().Release(b);
  return sec;
}

int Main(int argc, char** argv) {
  CLI::App app{"Tandem engine benchmark"};
  std::string model = "models/SmolLM2-135M-Instruct", json_out;
  int runs = 5, threads = 0, steps = 16;
  int64_t context = 128;
  std::vector<int64_t> prefill_lens = {128, 1024};
  app.add_option("--model", model);
  app.add_option("--runs", runs);
  app.add_option("--threads", threads);
  app.add_option("--decode-steps", steps);
  app.add_option("--decode-context", context, "prompt tokens before the timed decode steps");
  app.add_option("--json", json_out);
  app.add_option("--prefill-lens", prefill_lens,
                 "Prompt lengths of the timed prefills (e.g. 128,512)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  std::vector<int64_t> prefill_chunks;
  app.add_option("--prefill-chunks", prefill_chunks,
                 "Also time each prompt in forwards of at most this many tokens (e.g. 64,128,256: "
                 "a prefill worker's --max-batch-tokens), beside the one-forward figure")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  std::string weights = "auto";
  AddWeightsFlag(app, &weights);
  DeviceFlags device;
  AddDeviceFlags(app, &device);
  CLI11_PARSE(app, argc, argv);
  SetLogLevel("warn");
  EngineOptions eo;
  eo.num_threads = threads;
  eo.weights = WeightsFromFlag(weights);
  ApplyDeviceFlags(device, &eo);
  eo.kv_cache_bytes = int64_t{1} << 30;
  auto engine = Engine::Load(model, eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "error: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  Engine& e = **engine;
  std::mt19937 rng(1);
  nlohmann::json out;
  out["model"] = model;
  out["threads"] = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  out["runs"] = runs;
  out["weights"] = weights;
  out["backend"] = e.runner().Describe();
  out["decode_context"] = context;
  std::printf("engine_bench: %s, %s weights, %d threads (%s), median of %d runs\n", model.c_str(),
              weights.c_str(), out["threads"].get<int>(), e.runner().Describe().c_str(), runs);
  for (int64_t len : prefill_lens) {
    PrefillSeconds(e, len, rng);  // warm-up
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) t.push_back(PrefillSeconds(e, len, rng));
    const double m = Median(t);
    std::printf("prefill %5lld tokens: %8.1f tokens/s  (%.1f ms)\n", static_cast<long long>(len),
                len / m, m * 1e3);
    out["prefill"][std::to_string(len)] = {{"tokens_per_s", len / m}, {"seconds", m}};
    for (int64_t chunk : prefill_chunks) {
      if (chunk >= len) continue;
      std::vector<double> tc;
      for (int r = 0; r < runs; ++r) tc.push_back(PrefillSeconds(e, len, rng, chunk));
      const double mc = Median(tc);
      std::printf(
          "prefill %5lld tokens in chunks of %lld: %8.1f tokens/s  (%.1f ms, %.2fx the "
          "one-forward time)\n",
          static_cast<long long>(len), static_cast<long long>(chunk), len / mc, mc * 1e3, mc / m);
      out["prefill_chunked"][std::to_string(len)][std::to_string(chunk)] = {
          {"tokens_per_s", len / mc}, {"seconds", mc}};
    }
  }
  for (int batch : {1, 8, 32}) {
    DecodeStepSeconds(e, batch, context, 2, rng);  // warm-up
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) t.push_back(DecodeStepSeconds(e, batch, context, steps, rng));
    const double m = Median(t);
    std::printf("decode batch %2d (context %lld): %8.1f tokens/s  (%.1f ms/step)\n", batch,
                static_cast<long long>(context), batch / m, m * 1e3);
    out["decode"][std::to_string(batch)] = {{"tokens_per_s", batch / m}, {"step_seconds", m}};
  }
  // The memory target (issue 10): peak RSS <= weights + KV cache + 150 MiB, where the KV cache
  // counts the blocks this run used at most (the untouched part of the reservation costs nothing).
  const double weights_mib = e.runner().weight_bytes() / double(1 << 20);
  const double kv_mib = MaxBlocksUsed() * e.kv_cache().geometry().BlockBytes() / double(1 << 20);
  const double budget = weights_mib + kv_mib + 150;
  out["peak_rss_mib"] = PeakRssMiB();
  out["weights_mib"] = weights_mib;
  out["kv_used_mib"] = kv_mib;
  out["kv_cache_mib"] = eo.kv_cache_bytes / double(1 << 20);
  std::printf(
      "peak RSS %.0f MiB; weights %.0f MiB + KV used %.0f MiB + 150 = %.0f MiB budget: %s "
      "(%.2fx)\n",
      PeakRssMiB(), weights_mib, kv_mib, budget, PeakRssMiB() <= budget ? "within" : "OVER",
      PeakRssMiB() / budget);
  if (!json_out.empty()) std::ofstream(json_out) << out.dump(2);
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
