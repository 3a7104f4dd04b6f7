// The CUDA ModelRunner on Llama-3-8B shapes with random bf16 weights, against the hardware's
// limits measured or looked up in the same run:
//   (a) batch-1 decode tokens/s at context 512, and its % of the HBM roofline;
//   (b) prefill of a 2,048-token prompt: tokens/s and MFU against dense bf16 peak;
//   (c) decode at batch 8 / 32 / 64: tokens/s, ratio to batch 1, % of roofline;
//   (d) each with --deterministic off and on, and the cost ratio between them.
// Every figure is printed with the device name beside it and written to --out as JSON (rewritten
// after each measurement, so a run killed by a timeout keeps what it measured).
//
//   cuda_runner_bench [--shape 8b|tiny] [--layers 2] [--deterministic off|on|both]
//                     [--batches 1,8,32,64] [--out result.json]
//
// Weights: every matrix is a bf16 view into ONE shared buffer of random values as large as the
// largest matrix (vocab x hidden: ~1 GB on the host for 8B), at a different offset per matrix;
// the runner uploads each. Norms are owned float vectors. The buffer is a shared memfd mapping,
// like a mapped checkpoint: a backend that hands a converted matrix's pages back
// (madvise(DONTNEED), as the CPU runner does) leaves the values in place for the next matrix.
//
// Timing: Forward is asynchronous on a GPU until Sample / CopyLogits, so every timed interval is
// Forward + greedy Sample of every logits row (the step a server runs), on the host clock, after
// warm-up iterations (which also capture the decode CUDA graphs). Medians are reported.
//
// Binaries: cuda_runner_bench (the "cuda" flavour: nvcc kernels, cudart, cuBLASLt) and
// cuda_runner_bench_interp (the kernels interpreted on the CPU; `--shape tiny` only makes sense
// there). `--backend cpu` runs the same measurements on the CPU runner (a reference for the code
// path; no roofline unless --peak-gbs / --peak-tflops are given).
//
// Files: this one (the measurements, the report, main), cuda_runner_bench_model.{h,cc} (flags,
// shapes, random weights, the cost model) and cuda_runner_bench_device.{h,cc} (the device and
// its limits).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cuda_runner_bench_device.h"
#include "cuda_runner_bench_model.h"
#include "tandem/common/logging.h"
#include "tandem/common/status.h"
#include "tandem/engine/cpu_runner.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/weights.h"

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Measurements

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<int32_t> RandomTokens(std::mt19937& rng, int32_t vocab, int64_t n) {
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (auto& t : v) t = d(rng);
  return v;
}

// Greedy sampling of the last Forward's rows: the call that waits for the device.
Status SampleGreedy(ModelRunner& runner, std::span<const int64_t> positions,
                    std::vector<int32_t>* tokens) {
  static const SamplingParams kGreedy = [] {
    SamplingParams p;
    p.temperature = 0.0f;
    return p;
  }();
  std::vector<SampleRow> rows(positions.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].params = &kGreedy;
    rows[i].position = positions[i];
  }
  std::vector<SampleResult> out;
  TANDEM_RETURN_IF_ERROR(runner.Sample(rows, &out));
  if (out.size() != rows.size()) {
    return InternalError("Sample returned {} rows for {}", out.size(), rows.size());
  }
  if (tokens != nullptr) {
    tokens->resize(out.size());
    for (size_t i = 0; i < out.size(); ++i) (*tokens)[i] = out[i].token;
  }
  return Status::Ok();
}

// Blocks of several sequences, released when this goes out of scope.
class SequenceBlocks {
 public:
  explicit SequenceBlocks(BlockAllocator& a) : alloc_(a) {}
  ~SequenceBlocks() {
    for (auto& b : blocks_) alloc_.Release(b);
  }
  Status Add(int32_t n) {
    TANDEM_ASSIGN_OR_RETURN(auto b, alloc_.Allocate(n));
    blocks_.push_back(std::move(b));
    return Status::Ok();
  }
  const std::vector<int32_t>& operator[](size_t i) const { return blocks_[i]; }

 private:
  BlockAllocator& alloc_;
  std::vector<std::vector<int32_t>> blocks_;
};

// Seconds of each timed prefill of one `len`-token prompt (Forward + Sample of its last row).
StatusOr<std::vector<double>> TimePrefill(ModelRunner& runner, KvCache& cache, int64_t len,
                                          int warmup, int runs, std::mt19937& rng) {
  const std::vector<int32_t> tokens = RandomTokens(rng, runner.config().vocab_size, len);
  const int64_t position[] = {len};
  std::vector<double> times;
  for (int i = 0; i < warmup + runs; ++i) {
    SequenceBlocks blocks(cache.allocator());
    TANDEM_RETURN_IF_ERROR(blocks.Add(cache.BlocksFor(len)));
    ForwardBatch batch;
    batch.prefill.push_back(ForwardChunk{tokens, 0, blocks[0], true});
    const auto t0 = Clock::now();
    TANDEM_RETURN_IF_ERROR(runner.Forward(batch, cache));
    TANDEM_RETURN_IF_ERROR(SampleGreedy(runner, position, nullptr));
    const auto t1 = Clock::now();
    if (i >= warmup) times.push_back(Seconds(t0, t1));
  }
  return times;
}

// Seconds of each timed decode step of `batch` sequences whose prompts hold `context` tokens
// (prefilled untimed, at most `max_setup_tokens` per Forward). Each step feeds every row the
// token sampled for it in the step before.
StatusOr<std::vector<double>> TimeDecode(ModelRunner& runner, KvCache& cache, int batch,
                                         int64_t context, int warmup, int steps,
                                         int64_t max_setup_tokens, std::mt19937& rng) {
  const int64_t positions = context + warmup + steps + 1;
  SequenceBlocks blocks(cache.allocator());
  for (int b = 0; b < batch; ++b) TANDEM_RETURN_IF_ERROR(blocks.Add(cache.BlocksFor(positions)));
  std::vector<std::vector<int32_t>> prompts(batch);
  std::vector<int32_t> next(batch);
  for (int b0 = 0; b0 < batch;) {
    ForwardBatch fb;
    std::vector<int64_t> pos;
    int b1 = b0;
    for (int64_t n = 0; b1 < batch && (b1 == b0 || n + context <= max_setup_tokens);
         ++b1, n += context) {
      prompts[b1] = RandomTokens(rng, runner.config().vocab_size, context);
      fb.prefill.push_back(ForwardChunk{prompts[b1], 0, blocks[b1], true});
      pos.push_back(context);
    }
    TANDEM_RETURN_IF_ERROR(runner.Forward(fb, cache));
    std::vector<int32_t> sampled;
    TANDEM_RETURN_IF_ERROR(SampleGreedy(runner, pos, &sampled));
    std::copy(sampled.begin(), sampled.end(), next.begin() + b0);
    b0 = b1;
  }
  std::vector<double> times;
  std::vector<int64_t> pos(batch);
  std::vector<int32_t> sampled;
  for (int s = 0; s < warmup + steps; ++s) {
    ForwardBatch fb;
    fb.decode.resize(batch);
    for (int b = 0; b < batch; ++b) {
      fb.decode[b] =
          ForwardChunk{std::span<const int32_t>(&next[b], 1), context + s, blocks[b], true};
      pos[b] = context + s + 1;
    }
    const auto t0 = Clock::now();
    TANDEM_RETURN_IF_ERROR(runner.Forward(fb, cache));
    TANDEM_RETURN_IF_ERROR(SampleGreedy(runner, pos, &sampled));
    const auto t1 = Clock::now();
    std::copy(sampled.begin(), sampled.end(), next.begin());
    if (s >= warmup) times.push_back(Seconds(t0, t1));
  }
  return times;
}

// ---------------------------------------------------------------------------------------------
// Report

struct Result {
  std::string name;  // "decode b=1 ctx=512", "prefill 2048"
  std::string kind;  // "decode" | "prefill"
  std::string mode;  // deterministic "off" | "on"
  int batch = 0;
  int64_t context = 0;  // decode: prompt tokens before the timed steps; prefill: prompt length
  double median_s = 0;
  double tokens_per_s = 0;
  double roofline_tokens_per_s = 0;  // decode: max(bytes / HBM, flops / peak); 0 = unknown
  double pct_of_roofline = 0;        // decode
  double pct_of_copy = 0;            // decode: against the measured copy bandwidth
  double mfu_pct = 0;                // prefill
  double vs_batch1 = 0;              // decode, batch > 1
  std::vector<double> samples;
  std::string error;
};

std::string Pct(double v) { return v > 0 ? fmt::format("{:.1f}%", v) : std::string("n/a"); }

void PrintHeader() {
  std::printf("%-24s %-4s %14s %10s  %-44s  %s\n", "measure", "det", "tokens/s", "median ms",
              "against", "device");
  std::fflush(stdout);
}

void PrintResult(const Result& r, const DeviceInfo& d) {
  if (!r.error.empty()) {
    std::printf("%-24s %-4s %14s %10s  %-44s  %s\n", r.name.c_str(), r.mode.c_str(), "FAILED", "-",
                r.error.substr(0, 44).c_str(), d.name.c_str());
    std::fflush(stdout);
    return;
  }
  std::string against;
  if (r.kind == "prefill") {
    against = d.peak_tflops > 0
                  ? fmt::format("MFU {} of {:.0f} TFLOP/s", Pct(r.mfu_pct), d.peak_tflops)
                  : std::string("no MFU: bf16 peak unknown");
  } else {
    against =
        r.roofline_tokens_per_s > 0
            ? fmt::format("{} of roofline {:.1f}", Pct(r.pct_of_roofline), r.roofline_tokens_per_s)
            : std::string("no roofline: HBM unknown");
    if (r.vs_batch1 > 0) against += fmt::format(", {:.2f}x b=1", r.vs_batch1);
  }
  std::printf("%-24s %-4s %14.1f %10.3f  %-44s  %s\n", r.name.c_str(), r.mode.c_str(),
              r.tokens_per_s, r.median_s * 1e3, against.c_str(), d.name.c_str());
  std::fflush(stdout);
}

json ResultJson(const Result& r, const DeviceInfo& d) {
  json j = {{"name", r.name},   {"kind", r.kind},       {"deterministic", r.mode == "on"},
            {"batch", r.batch}, {"context", r.context}, {"device", d.name}};
  if (!r.error.empty()) {
    j["error"] = r.error;
    return j;
  }
  j["median_s"] = r.median_s;
  j["tokens_per_s"] = r.tokens_per_s;
  j["samples_s"] = r.samples;
  if (r.kind == "decode") {
    j["roofline_tokens_per_s"] = r.roofline_tokens_per_s;
    j["pct_of_hbm_roofline"] = r.pct_of_roofline;
    j["pct_of_measured_copy"] = r.pct_of_copy;
    if (r.vs_batch1 > 0) j["vs_batch1"] = r.vs_batch1;
  } else {
    j["mfu_pct"] = r.mfu_pct;
  }
  return j;
}

void WriteJson(const std::string& path, const json& j) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
  }
  std::rename(tmp.c_str(), path.c_str());
}

// ---------------------------------------------------------------------------------------------

StatusOr<std::unique_ptr<ModelRunner>> MakeRunner(const Flags& f, const ModelConfig& config,
                                                  const RandomBf16Buffer& buf, bool deterministic) {
  auto weights = MakeWeights(config, buf);
  if (f.backend == "cpu") {
    CpuRunnerOptions o;
    o.weights = DType::kBF16;
    o.num_threads = f.threads;
    return CreateCpuRunner(config, std::move(weights), o);
  }
  CudaRunnerOptions o;
  o.device = f.device;
  o.weights = DType::kBF16;
  o.deterministic = deterministic;
  o.cuda_graphs = f.cuda_graphs;
  return CreateCudaRunner(config, std::move(weights), o);
}

// Runs every measurement with one runner; appends to `results` and `report`.
Status RunMode(const Flags& f, const ModelConfig& config, const Workload& w,
               const RandomBf16Buffer& buf, const DeviceInfo& dev, const std::string& mode,
               std::vector<Result>* results, json* report) {
  json& jm = (*report)["modes"][mode];
  const auto t0 = Clock::now();
  auto runner_or = MakeRunner(f, config, buf, mode == "on");
  if (!runner_or.ok()) {
    jm["error"] = runner_or.status().ToString();
    return runner_or.status();
  }
  ModelRunner& runner = **runner_or;
  jm["create_s"] = Seconds(t0, Clock::now());
  jm["describe"] = runner.Describe();
  jm["weight_bytes"] = runner.weight_bytes();
  const KvGeometry geo = runner.KvGeometryFor(f.page_size);
  const int max_batch = *std::max_element(w.batches.begin(), w.batches.end());
  const int32_t num_blocks = std::max(max_batch * geo.BlocksFor(w.context + w.warmup + w.iters + 1),
                                      geo.BlocksFor(w.prefill_len)) +
                             1;
  auto pool = runner.CreatePagePool(geo, num_blocks);
  if (!pool.ok()) {
    jm["error"] = pool.status().ToString();
    return pool.status();
  }
  KvCache cache(std::move(*pool));
  jm["kv_dtype"] = std::string(DTypeName(geo.dtype));
  jm["kv_pool_bytes"] = cache.pool().bytes();
  std::printf(
      "# deterministic %s: %s; weights %.2f GB on the device, created in %.1f s; KV pool "
      "%d blocks of %d tokens (%.2f GB, %s)\n",
      mode.c_str(), runner.Describe().c_str(), runner.weight_bytes() / 1e9,
      jm["create_s"].get<double>(), num_blocks, f.page_size, cache.pool().bytes() / 1e9,
      std::string(DTypeName(geo.dtype)).c_str());
  std::fflush(stdout);

  const CostModel cost(config, DTypeSize(DType::kBF16), DTypeSize(geo.dtype));
  std::mt19937 rng(static_cast<uint32_t>(f.seed));
  Status first_error = Status::Ok();
  auto record = [&](Result r) {
    if (!r.error.empty() && first_error.ok()) first_error = InternalError("{}", r.error);
    PrintResult(r, dev);
    jm["results"].push_back(ResultJson(r, dev));
    results->push_back(std::move(r));
    WriteJson(f.out, *report);
  };
  double batch1_tokens_per_s = 0;
  auto decode = [&](int batch) {
    Result r;
    r.kind = "decode";
    r.mode = mode;
    r.batch = batch;
    r.context = w.context;
    r.name = fmt::format("decode b={} ctx={}", batch, w.context);
    auto t =
        TimeDecode(runner, cache, batch, w.context, w.warmup, w.iters, f.max_setup_tokens, rng);
    if (!t.ok()) {
      r.error = t.status().ToString();
      record(std::move(r));
      return;
    }
    r.samples = *t;
    r.median_s = Median(*t);
    r.tokens_per_s = batch / r.median_s;
    // Positions attended in the middle of the timed steps.
    const double kv_tokens = w.context + w.warmup + 1 + w.iters / 2.0;
    double roof_s = 0;
    if (dev.hbm_gbs > 0) roof_s = cost.DecodeBytes(batch, kv_tokens) / (dev.hbm_gbs * 1e9);
    if (dev.peak_tflops > 0) {
      roof_s = std::max(roof_s, cost.DecodeFlops(batch, kv_tokens) / (dev.peak_tflops * 1e12));
    }
    if (roof_s > 0) {
      r.roofline_tokens_per_s = batch / roof_s;
      r.pct_of_roofline = 100.0 * r.tokens_per_s / r.roofline_tokens_per_s;
    }
    if (dev.copy_gbs > 0) {
      const double copy_s = cost.DecodeBytes(batch, kv_tokens) / (dev.copy_gbs * 1e9);
      r.pct_of_copy = 100.0 * copy_s / r.median_s;
    }
    if (batch == 1) batch1_tokens_per_s = r.tokens_per_s;
    if (batch > 1 && batch1_tokens_per_s > 0) r.vs_batch1 = r.tokens_per_s / batch1_tokens_per_s;
    record(std::move(r));
  };
  auto prefill = [&] {
    Result r;
    r.kind = "prefill";
    r.mode = mode;
    r.batch = 1;
    r.context = w.prefill_len;
    r.name = fmt::format("prefill {}", w.prefill_len);
    auto t =
        TimePrefill(runner, cache, w.prefill_len, std::max(1, w.warmup / 2), w.prefill_runs, rng);
    if (!t.ok()) {
      r.error = t.status().ToString();
      record(std::move(r));
      return;
    }
    r.samples = *t;
    r.median_s = Median(*t);
    r.tokens_per_s = w.prefill_len / r.median_s;
    if (dev.peak_tflops > 0) {
      r.mfu_pct = 100.0 * cost.PrefillFlops(w.prefill_len) / r.median_s / (dev.peak_tflops * 1e12);
    }
    record(std::move(r));
  };
  // Batch 1 first (the headline), then prefill, then the larger batches.
  bool prefilled = false;
  std::vector<int32_t> batches = w.batches;
  std::stable_sort(batches.begin(), batches.end());
  for (int32_t b : batches) {
    if (b > 1 && !prefilled) {
      prefill();
      prefilled = true;
    }
    decode(b);
  }
  if (!prefilled) prefill();
  return first_error;
}

int Main(int argc, char** argv) {
  Flags f;
  CLI::App app{"CUDA ModelRunner benchmark on Llama-3-8B shapes with random bf16 weights"};
  app.add_option("--shape", f.shape, "Model preset: 8b (Llama-3-8B) or tiny (a few MB)")
      ->check(CLI::IsMember({"8b", "tiny"}));
  app.add_option("--backend", f.backend, "cuda (this binary's CUDA flavour) or cpu")
      ->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--deterministic", f.deterministic,
                 "Batch-invariant mode: off, on, or both (one runner each, and the cost ratio)")
      ->check(CLI::IsMember({"off", "on", "both"}));
  app.add_flag("!--no-cuda-graphs", f.cuda_graphs, "Do not capture decode steps as CUDA graphs");
  app.add_option("--device", f.device, "CUDA device ordinal");
  app.add_option("--threads", f.threads, "CPU threads for --backend cpu (0 = all)");
  app.add_option("--layers", f.layers,
                 "Override the preset's layer count (e.g. 2 for a smoke run)");
  app.add_option("--hidden", f.hidden);
  app.add_option("--intermediate", f.intermediate);
  app.add_option("--heads", f.heads);
  app.add_option("--kv-heads", f.kv_heads);
  app.add_option("--head-dim", f.head_dim);
  app.add_option("--vocab", f.vocab);
  app.add_option("--rope-theta", f.rope_theta);
  app.add_flag("--llama3-rope", f.llama3_rope, "Llama-3.1 rope scaling (factor 8)");
  app.add_option("--context", f.context, "Prompt tokens before the timed decode steps (8b: 512)");
  app.add_option("--prefill-len", f.prefill_len, "Prompt length of the timed prefill (8b: 2048)");
  app.add_option("--batches", f.batches, "Decode batch sizes (8b: 1,8,32,64)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--warmup", f.warmup, "Untimed decode steps before timing (8b: 3)");
  app.add_option("--iters", f.iters, "Timed decode steps per batch size (8b: 20)");
  app.add_option("--prefill-runs", f.prefill_runs, "Timed prefills (8b: 5)");
  app.add_option("--page-size", f.page_size, "KV tokens per page")->check(CLI::PositiveNumber);
  app.add_option("--max-setup-tokens", f.max_setup_tokens,
                 "Tokens per untimed prefill Forward that fills the decode contexts");
  app.add_option("--peak-gbs", f.peak_gbs, "Memory bandwidth to use for the roofline, GB/s");
  app.add_option("--peak-tflops", f.peak_tflops, "Dense bf16 peak to use for MFU, TFLOP/s");
  app.add_flag("!--no-copy-bandwidth", f.copy_bandwidth,
               "Skip the device-to-device copy measurement");
  app.add_option("--seed", f.seed);
  app.add_option("--out", f.out, "Write the results as JSON here");
  CLI11_PARSE(app, argc, argv);
  SetLogLevel("warn");

  auto config_or = MakeConfig(f);
  if (!config_or.ok()) {
    std::fprintf(stderr, "cuda_runner_bench: %s\n", config_or.status().ToString().c_str());
    return 2;
  }
  const ModelConfig& config = *config_or;
  const Workload w = MakeWorkload(f);
  if (f.backend == "cuda" && CudaBackendName().empty()) {
    std::fprintf(stderr, "cuda_runner_bench: this binary has no CUDA backend linked in\n");
    return 2;
  }
  auto dev_or = QueryDevice(f);
  if (!dev_or.ok()) {
    std::fprintf(stderr, "cuda_runner_bench: %s\n", dev_or.status().ToString().c_str());
    return 2;
  }
  const DeviceInfo& dev = *dev_or;

  const auto t0 = Clock::now();
  auto buf_or = RandomBf16Buffer::Create(BufferElems(config), f.seed, 0.03f);
  if (!buf_or.ok()) {
    std::fprintf(stderr, "cuda_runner_bench: %s\n", buf_or.status().ToString().c_str());
    return 2;
  }
  const RandomBf16Buffer& buf = **buf_or;
  const double fill_s = Seconds(t0, Clock::now());

  const CostModel cost(config, DTypeSize(DType::kBF16), /*kv: bf16 unless the runner says*/ 2);
  json report;
  report["bench"] = "cuda_runner_bench";
  report["complete"] = false;
  report["backend"] = f.backend == "cpu" ? std::string("cpu") : std::string(CudaBackendName());
  report["device"] = dev.ToJson();
  report["model"] = {{"shape", f.shape},
                     {"layers", config.num_layers},
                     {"hidden", config.hidden_size},
                     {"intermediate", config.intermediate_size},
                     {"heads", config.num_heads},
                     {"kv_heads", config.num_kv_heads},
                     {"head_dim", config.head_dim},
                     {"vocab", config.vocab_size},
                     {"rope_theta", config.rope_theta},
                     {"llama3_rope", f.llama3_rope},
                     {"weights", "bf16 random"},
                     {"weight_bytes_streamed_per_step", cost.weight_bytes}};
  report["workload"] = {{"context", w.context},
                        {"prefill_len", w.prefill_len},
                        {"batches", w.batches},
                        {"warmup", w.warmup},
                        {"iters", w.iters},
                        {"prefill_runs", w.prefill_runs},
                        {"cuda_graphs", f.cuda_graphs},
                        {"page_size", f.page_size},
                        {"timing", "host clock around Forward + greedy Sample (synchronising)"}};
  report["host_buffer_bytes"] = buf.elems() * 2;
  report["host_fill_s"] = fill_s;
  WriteJson(f.out, report);

  std::printf("cuda_runner_bench: %s shape (%d layers, hidden %d, vocab %d), backend %s\n",
              f.shape.c_str(), config.num_layers, config.hidden_size, config.vocab_size,
              report["backend"].get<std::string>().c_str());
  std::printf("device %s: HBM %.0f GB/s (%s); measured copy %s; bf16 peak %.0f TFLOP/s (%s)\n",
              dev.name.c_str(), dev.hbm_gbs, dev.hbm_source.c_str(),
              dev.copy_gbs > 0 ? fmt::format("{:.0f} GB/s", dev.copy_gbs).c_str() : "n/a",
              dev.peak_tflops, dev.peak_source.c_str());
  std::printf(
      "weights streamed per step %.3f GB; KV %.1f KiB per token (bf16); host buffer "
      "%.3f GB filled in %.1f s\n",
      cost.weight_bytes / 1e9, cost.kv_bytes_per_token / 1024, buf.elems() * 2 / 1e9, fill_s);
  std::printf(
      "roofline = max(bytes / HBM, flops / peak); MFU flops = 2 x matrix params x tokens"
      " + causal attention (4 x heads x head_dim x kv per token per layer)\n");
  PrintHeader();

  std::vector<std::string> modes;
  if (f.deterministic != "on") modes.push_back("off");
  if (f.deterministic != "off") modes.push_back("on");
  std::vector<Result> results;
  int rc = 0;
  for (const std::string& mode : modes) {
    Status st = RunMode(f, config, w, buf, dev, mode, &results, &report);
    if (!st.ok()) {
      std::printf("# deterministic %s: FAILED: %s\n", mode.c_str(), st.ToString().c_str());
      report["errors"].push_back(fmt::format("deterministic {}: {}", mode, st.ToString()));
      rc = 1;
    }
    WriteJson(f.out, report);
  }

  // (d) the cost of deterministic mode: time on / time off for every measurement in both.
  std::map<std::string, std::map<std::string, const Result*>> by_name;
  for (const Result& r : results) {
    if (r.error.empty()) by_name[r.name][r.mode] = &r;
  }
  if (modes.size() == 2) {
    std::printf("\ndeterministic cost (time on / time off; tokens/s off -> on)\n");
    for (const Result& r : results) {
      if (r.mode != "off" || !r.error.empty()) continue;
      auto it = by_name[r.name].find("on");
      if (it == by_name[r.name].end()) continue;
      const Result& on = *it->second;
      const double cost_ratio = on.median_s / r.median_s;
      std::printf("%-24s %6.3fx   %12.1f -> %12.1f tokens/s   %s\n", r.name.c_str(), cost_ratio,
                  r.tokens_per_s, on.tokens_per_s, dev.name.c_str());
      report["deterministic_cost"].push_back({{"name", r.name},
                                              {"time_on_over_off", cost_ratio},
                                              {"tokens_per_s_off", r.tokens_per_s},
                                              {"tokens_per_s_on", on.tokens_per_s},
                                              {"device", dev.name}});
    }
  }
  report["complete"] = true;
  report["ok"] = rc == 0;
  WriteJson(f.out, report);
  return rc;
}

}  // namespace
}  // namespace tandem::bench

int main(int argc, char** argv) { return tandem::bench::Main(argc, argv); }