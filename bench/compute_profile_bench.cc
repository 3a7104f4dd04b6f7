// Calibrates simulated compute (tandem/engine/sim_runner.h): times the real backend on this
// machine — one prompt chunk of each --prefill-tokens size, decode steps of each --decode-batch
// size at --decode-context, and decode at a longer context for the attention slope — and writes
// the compute profile JSON that `--simulate-compute` reads, labelled with the model, the CPU, the
// threads and the load average while it ran. Medians of --runs runs.
//
//   compute_profile_bench --model models/SmolLM2-135M-Instruct --out profile.json [--threads 2]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <random>
#include <string>

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

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string a;
  in >> a;
  return a.empty() ? "?" : a;
}

// Seconds of one forward over a `len`-token chunk at position 0.
double PrefillSeconds(Engine& e, int64_t len, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, e.config().vocab_size - 1);
  std::vector<int32_t> tokens(len);
  for (auto& t : tokens) t = d(rng);
  KvCache& cache = e.kv_cache();
  auto blocks = cache.allocator().Allocate(cache.BlocksFor(len));
  ForwardBatch b;
  b.prefill.push_back({tokens, 0, *blocks, true});
  const auto t0 = Clock::now();
  Status st = e.runner().Forward(b, cache);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  cache.allocator().Release(*blocks);
  if (!st.ok()) TLOG_ERROR("{}", st.ToString());
  return s;
}

// Seconds of one decode step of `batch` rows, each at `context` (its K/V written beforehand).
double DecodeSeconds(Engine& e, int batch, int64_t context, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> d(0, e.config().vocab_size - 1);
  KvCache& cache = e.kv_cache();
  std::vector<std::vector<int32_t>> toks(batch), blocks(batch);
  ForwardBatch pre, step;
  for (int b = 0; b < batch; ++b) {
    toks[b].resize(context);
    for (auto& t : toks[b]) t = d(rng);
    blocks[b] = *cache.allocator().Allocate(cache.BlocksFor(context));
    pre.prefill.push_back(
        {std::span<const int32_t>(toks[b]).first(context - 1), 0, blocks[b], false});
    step.decode.push_back(
        {std::span<const int32_t>(toks[b]).subspan(context - 1, 1), context - 1, blocks[b], true});
  }
  (void)e.runner().Forward(pre, cache);  // the context's K/V, untimed
  const auto t0 = Clock::now();
  Status st = e.runner().Forward(step, cache);
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  for (auto& b : blocks) cache.allocator().Release(b);
  if (!st.ok()) TLOG_ERROR("{}", st.ToString());
  return s;
}

int Main(int argc, char** argv) {
  CLI::App app{"Writes a compute profile for --simulate-compute from the real backend"};
  std::string model = "models/SmolLM2-135M-Instruct", out, weights = "auto", note;
  int runs = 3, threads = 0;
  int64_t context = 256, long_context = 1024;
  std::vector<int64_t> prefill_tokens = {8, 16, 32, 64, 128, 256, 512, 1024};
  std::vector<int> decode_batch = {1, 2, 4, 8, 16, 32};
  app.add_option("--model", model)->capture_default_str();
  app.add_option("--out", out, "Profile JSON to write")->required();
  app.add_option("--runs", runs)->capture_default_str();
  app.add_option("--threads", threads, "Compute threads (0 = every core)")->capture_default_str();
  app.add_option("--prefill-tokens", prefill_tokens)->delimiter(',')->capture_default_str();
  app.add_option("--decode-batch", decode_batch)->delimiter(',')->capture_default_str();
  app.add_option("--decode-context", context)->capture_default_str();
  app.add_option("--long-context", long_context, "Decode context for the attention slope")
      ->capture_default_str();
  app.add_option("--note", note, "Added to the machine label (e.g. what else ran)");
  AddWeightsFlag(app, &weights);
  CLI11_PARSE(app, argc, argv);

  EngineOptions eo;
  eo.num_threads = threads;
  eo.weights = WeightsFromFlag(weights);
  eo.kv_cache_bytes = int64_t{1} << 30;
  auto engine = Engine::Load(model, eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "error: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  Engine& e = **engine;
  std::mt19937 rng(1);
  const std::string load_before = LoadAverage();
  (void)PrefillSeconds(e, 64, rng);  // warm-up
  nlohmann::json prefill = {{"tokens", nlohmann::json::array()},
                            {"seconds", nlohmann::json::array()}};
  for (int64_t n : prefill_tokens) {
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) t.push_back(PrefillSeconds(e, n, rng));
    prefill["tokens"].push_back(n);
    prefill["seconds"].push_back(Median(t));
    std::printf("prefill %5lld tokens: %8.2f ms\n", static_cast<long long>(n), Median(t) * 1e3);
  }
  nlohmann::json decode = {{"batch", nlohmann::json::array()},
                           {"seconds", nlohmann::json::array()},
                           {"context", context}};
  double at_ref = 0;
  for (int b : decode_batch) {
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) t.push_back(DecodeSeconds(e, b, context, rng));
    decode["batch"].push_back(b);
    decode["seconds"].push_back(Median(t));
    if (b == 8) at_ref = Median(t);
    std::printf("decode batch %3d @ %lld: %8.2f ms\n", b, static_cast<long long>(context),
                Median(t) * 1e3);
  }
  // Attention slope: batch 8 at a long context against the reference context.
  double slope = 0;
  {
    std::vector<double> t;
    for (int r = 0; r < runs; ++r) t.push_back(DecodeSeconds(e, 8, long_context, rng));
    if (at_ref == 0) at_ref = DecodeSeconds(e, 8, context, rng);
    slope =
        std::max(0.0, (Median(t) - at_ref) / (8.0 * static_cast<double>(long_context - context)));
    std::printf("decode batch   8 @ %lld: %8.2f ms -> %.3g s per attended position\n",
                static_cast<long long>(long_context), Median(t) * 1e3, slope);
  }
  const std::time_t now = std::time(nullptr);
  char created[32];
  std::strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  std::string machine =
      fmt::format("{}, {} cores online, {} threads, load average {} -> {}", CpuModel(),
                  sysconf(_SC_NPROCESSORS_ONLN), threads == 0 ? "all" : std::to_string(threads),
                  load_before, LoadAverage());
  if (!note.empty()) machine += "; " + note;
  nlohmann::json j = {{"format", "tandem-compute-profile/1"},
                      {"model", std::filesystem::path(model).filename().string()},
                      {"backend", e.runner().Describe()},
                      {"machine", machine},
                      {"created", created},
                      {"prefill", prefill},
                      {"decode", decode},
                      {"attention_seconds_per_position", slope},
                      {"scale", 1.0}};
  std::ofstream f(out);
  f << j.dump(2) << "\n";
  if (!f) {
    std::fprintf(stderr, "error: cannot write %s\n", out.c_str());
    return 1;
  }
  std::printf("wrote %s\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
