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
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tandem/common/logging.h"
#include "tandem/common/status.h"
#include "tandem/engine/cpu_runner.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/weights.h"

#if TANDEM_BENCH_CUDART
#include <cuda_runtime.h>
#endif

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Flags

struct Flags {
  std::string shape = "8b";
  std::string backend = "cuda";
  std::string deterministic = "both";  // off | on | both
  bool cuda_graphs = true;
  int32_t device = 0;
  int32_t threads = 0;  // --backend cpu only
  // Model shape: 0 / negative = the preset's value.
  int32_t layers = 0, hidden = 0, intermediate = 0, heads = 0, kv_heads = 0, head_dim = 0;
  int32_t vocab = 0;
  double rope_theta = 0;
  bool llama3_rope = false;
  // Workload: 0 = the preset's value.
  int64_t context = 0;
  int64_t prefill_len = 0;
  std::vector<int32_t> batches;
  int32_t warmup = -1, iters = 0, prefill_runs = 0;
  int32_t page_size = 16;
  int64_t max_setup_tokens = 4096;       // tokens per untimed prefill Forward before a decode run
  double peak_gbs = 0, peak_tflops = 0;  // overrides of the device's peaks
  bool copy_bandwidth = true;
  uint64_t seed = 1;
  std::string out;
};

struct Workload {
  int64_t context = 512;
  int64_t prefill_len = 2048;
  std::vector<int32_t> batches = {1, 8, 32, 64};
  int32_t warmup = 3, iters = 20, prefill_runs = 5;
};

// Llama-3-8B (hidden 4096, 32 layers, 32 / 8 heads of 128, intermediate 14336, vocab 128256,
// rope theta 500000), or "tiny": a few-MB model of the same structure for the interpreter.
StatusOr<ModelConfig> MakeConfig(const Flags& f) {
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.arch_name = "LlamaForCausalLM";
  c.dtype = DType::kBF16;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = false;
  if (f.shape == "8b") {
    c.hidden_size = 4096;
    c.intermediate_size = 14336;
    c.num_layers = 32;
    c.num_heads = 32;
    c.num_kv_heads = 8;
    c.head_dim = 128;
    c.vocab_size = 128256;
    c.max_position_embeddings = 8192;
    c.rope_theta = 500000.0;
    c.bos_token_id = 128000;
    c.eos_token_ids = {128001, 128009};
  } else if (f.shape == "tiny") {
    c.hidden_size = 256;
    c.intermediate_size = 512;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.vocab_size = 1024;
    c.max_position_embeddings = 4096;
    c.rope_theta = 500000.0;
    c.bos_token_id = 0;
    c.eos_token_ids = {1};
  } else {
    return InvalidArgumentError("--shape must be 8b or tiny, got {}", f.shape);
  }
  if (f.layers > 0) c.num_layers = f.layers;
  if (f.hidden > 0) c.hidden_size = f.hidden;
  if (f.intermediate > 0) c.intermediate_size = f.intermediate;
  if (f.heads > 0) c.num_heads = f.heads;
  if (f.kv_heads > 0) c.num_kv_heads = f.kv_heads;
  if (f.head_dim > 0) c.head_dim = f.head_dim;
  if (f.vocab > 0) c.vocab_size = f.vocab;
  if (f.rope_theta > 0) c.rope_theta = f.rope_theta;
  if (f.llama3_rope) {  // Llama-3.1's rope_scaling
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
    c.max_position_embeddings = 131072;
  }
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0) {
    return InvalidArgumentError("--heads {} must be a multiple of --kv-heads {}", c.num_heads,
                                c.num_kv_heads);
  }
  return c;
}

Workload MakeWorkload(const Flags& f) {
  Workload w;
  if (f.shape == "tiny") {  // a couple of iterations: the interpreter runs every CUDA thread
    w.context = 32;
    w.prefill_len = 64;
    w.batches = {1, 4};
    w.warmup = 1;
    w.iters = 2;
    w.prefill_runs = 1;
  }
  if (f.context > 0) w.context = f.context;
  if (f.prefill_len > 0) w.prefill_len = f.prefill_len;
  if (!f.batches.empty()) w.batches = f.batches;
  if (f.warmup >= 0) w.warmup = f.warmup;
  if (f.iters > 0) w.iters = f.iters;
  if (f.prefill_runs > 0) w.prefill_runs = f.prefill_runs;
  return w;
}

// ---------------------------------------------------------------------------------------------
// Random weights

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// `elems` random bf16 values, uniform in (-scale, scale), in a shared memfd mapping (an anonymous
// private one if memfd_create fails). The values depend only on `seed`, not on the threads.
class RandomBf16Buffer {
 public:
  static StatusOr<std::unique_ptr<RandomBf16Buffer>> Create(int64_t elems, uint64_t seed,
                                                            float scale) {
    const size_t bytes = static_cast<size_t>(elems) * 2;
    void* p = MAP_FAILED;
    const int fd = memfd_create("cuda_runner_bench_weights", 0);
    if (fd >= 0 && ftruncate(fd, static_cast<off_t>(bytes)) == 0) {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    }
    if (fd >= 0) close(fd);  // the mapping keeps the memory
    if (p == MAP_FAILED) {
      p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (p == MAP_FAILED) {
      return ResourceExhaustedError("cannot map {} bytes for the random weights", bytes);
    }
    auto b = std::unique_ptr<RandomBf16Buffer>(new RandomBf16Buffer(p, elems));
    b->Fill(seed, scale);
    return b;
  }
  ~RandomBf16Buffer() { munmap(data_, static_cast<size_t>(elems_) * 2); }
  RandomBf16Buffer(const RandomBf16Buffer&) = delete;
  RandomBf16Buffer& operator=(const RandomBf16Buffer&) = delete;

  const uint16_t* data() const { return data_; }
  int64_t elems() const { return elems_; }

 private:
  RandomBf16Buffer(void* p, int64_t elems) : data_(static_cast<uint16_t*>(p)), elems_(elems) {}

  void Fill(uint64_t seed, float scale) {
    constexpr int64_t kChunk = int64_t{1} << 20;  // elements per seeded chunk
    const int64_t chunks = (elems_ + kChunk - 1) / kChunk;
    const int n_threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    std::vector<std::thread> pool;
    for (int t = 0; t < n_threads; ++t) {
      pool.emplace_back([&, t] {
        for (int64_t c = t; c < chunks; c += n_threads) {
          uint64_t state = SplitMix64(seed ^ (static_cast<uint64_t>(c) * 0x2545f4914f6cdd1dull));
          const int64_t end = std::min(elems_, (c + 1) * kChunk);
          for (int64_t i = c * kChunk; i < end; i += 4) {
            state = SplitMix64(state);
            for (int64_t j = 0; j < 4 && i + j < end; ++j) {
              const uint32_t r = static_cast<uint32_t>(state >> (16 * j)) & 0xffffu;
              const float v = (static_cast<float>(r) * (1.0f / 32768.0f) - 1.0f) * scale;
              data_[i + j] = static_cast<uint16_t>(std::bit_cast<uint32_t>(v) >> 16);
            }
          }
        }
      });
    }
    for (auto& th : pool) th.join();
  }

  uint16_t* data_;
  int64_t elems_;
};

// A [rows, cols] bf16 view at a 64-element-aligned offset chosen by `salt` (0: the start).
WeightTensor MatrixView(const RandomBf16Buffer& buf, int64_t rows, int64_t cols, uint64_t salt) {
  const int64_t n = rows * cols;
  const int64_t room = buf.elems() - n;  // >= 128: the buffer has slack (see MakeWeights)
  int64_t offset = 0;
  if (salt != 0) offset = (64 + static_cast<int64_t>(SplitMix64(salt) % (room - 63))) & ~63ll;
  WeightTensor t;
  t.raw = buf.data() + offset;
  t.dtype = DType::kBF16;
  t.shape = {rows, cols};
  return t;
}

WeightTensor OwnedVector(int64_t n, float value) {
  WeightTensor t;
  t.owned.assign(static_cast<size_t>(n), value);
  t.data = t.owned.data();
  t.raw = t.owned.data();
  t.dtype = DType::kF32;
  t.shape = {n};
  return t;
}

// Elements the shared buffer needs: the largest matrix plus slack for distinct offsets.
int64_t BufferElems(const ModelConfig& c) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim, f = c.intermediate_size,
                v = c.vocab_size;
  const int64_t largest = std::max({v * h, f * h, q * h, kv * h});
  return largest + std::max<int64_t>(4096, largest / 64);
}

std::unique_ptr<ModelWeights> MakeWeights(const ModelConfig& c, const RandomBf16Buffer& buf) {
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim, f = c.intermediate_size,
                v = c.vocab_size;
  auto w = std::make_unique<ModelWeights>();
  uint64_t salt = 1;
  w->embed = MatrixView(buf, v, h, 0);
  w->lm_head = MatrixView(buf, v, h, salt++);  // a different view: not tied
  w->final_norm = OwnedVector(h, 1.0f);
  w->layers.resize(c.num_layers);
  for (LayerWeights& l : w->layers) {
    l.input_norm = OwnedVector(h, 1.0f);
    l.post_norm = OwnedVector(h, 1.0f);
    l.q_proj = MatrixView(buf, q, h, salt++);
    l.k_proj = MatrixView(buf, kv, h, salt++);
    l.v_proj = MatrixView(buf, kv, h, salt++);
    l.o_proj = MatrixView(buf, h, q, salt++);
    l.gate_proj = MatrixView(buf, f, h, salt++);
    l.up_proj = MatrixView(buf, f, h, salt++);
    l.down_proj = MatrixView(buf, h, f, salt++);
  }
  return w;
}

// ---------------------------------------------------------------------------------------------
// The device and its limits

struct DeviceInfo {
  std::string name;         // "NVIDIA H200", "cpu", "cuda-interp (CPU interpreter)"
  double hbm_gbs = 0;       // peak memory bandwidth, 1e9 B/s; 0 = unknown
  std::string hbm_source;   // how hbm_gbs was found
  double copy_gbs = 0;      // measured device-to-device copy, (read + write) B/s / 1e9; 0 = none
  double peak_tflops = 0;   // dense bf16 tensor-core peak; 0 = unknown
  std::string peak_source;  // how peak_tflops was found
  int64_t memory_bytes = 0;

  json ToJson() const {
    return {{"name", name},
            {"hbm_gbs", hbm_gbs},
            {"hbm_source", hbm_source},
            {"copy_gbs", copy_gbs},
            {"peak_bf16_tflops", peak_tflops},
            {"peak_source", peak_source},
            {"memory_bytes", memory_bytes}};
  }
};

// Spec sheet figures (dense bf16, no sparsity), first substring match wins: specific names first.
struct SpecRow {
  const char* match;
  double hbm_gbs;
  double bf16_tflops;
};
constexpr SpecRow kSpecs[] = {
    {"GH200", 4000, 989},          {"H200 NVL", 4800, 835},  {"H200", 4800, 989},
    {"H100 NVL", 3900, 835},       {"H100 PCIe", 2000, 756}, {"H100", 3350, 989},
    {"H800", 3350, 989},           {"B200", 8000, 2250},     {"A100-SXM4-80GB", 2039, 312},
    {"A100 80GB PCIe", 1935, 312}, {"A100", 1555, 312},      {"L40S", 864, 362},
};

const SpecRow* FindSpec(const std::string& name) {
  for (const SpecRow& r : kSpecs) {
    if (name.find(r.match) != std::string::npos) return &r;
  }
  return nullptr;
}

#if TANDEM_BENCH_CUDART
// Device-to-device cudaMemcpy of 1 GiB, 5 times after a warm-up: bytes read + written per second.
double MeasureCopyGbs() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    if (a != nullptr) cudaFree(a);
    return 0;
  }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  constexpr int kReps = 5;
  cudaEventRecord(e0, nullptr);
  for (int i = 0; i < kReps; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, nullptr);
  cudaEventRecord(e1, nullptr);
  float ms = 0;
  const bool ok = cudaEventSynchronize(e1) == cudaSuccess &&
                  cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess && ms > 0;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  (void)cudaGetLastError();
  return ok ? 2.0 * bytes * kReps / (ms * 1e-3) / 1e9 : 0;
}
#endif

StatusOr<DeviceInfo> QueryDevice(const Flags& f) {
  DeviceInfo d;
  if (f.backend == "cpu") {
    d.name = "cpu";
  } else if (CudaBackendName() == "cuda-interp") {
    d.name = "cuda-interp (CPU interpreter)";
  } else {
#if TANDEM_BENCH_CUDART
    cudaDeviceProp prop{};
    const cudaError_t e = cudaGetDeviceProperties(&prop, f.device);
    if (e != cudaSuccess) {
      return UnavailableError("no usable CUDA device {}: {}", f.device, cudaGetErrorString(e));
    }
    cudaSetDevice(f.device);
    d.name = prop.name;
    d.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, f.device) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, f.device) ==
            cudaSuccess &&
        clock_khz > 0 && bus_bits > 0) {
      d.hbm_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate
      d.hbm_source =
          fmt::format("cudaDeviceGetAttribute: 2 x {} MHz x {} bit", clock_khz / 1000, bus_bits);
    }
    (void)cudaGetLastError();
    if (f.copy_bandwidth) d.copy_gbs = MeasureCopyGbs();
#else
    d.name = fmt::format("{} (no device query in this build)", CudaBackendName());
#endif
  }
  if (const SpecRow* s = FindSpec(d.name)) {
    if (d.hbm_gbs == 0) {
      d.hbm_gbs = s->hbm_gbs;
      d.hbm_source = fmt::format("spec table ({})", s->match);
    }
    d.peak_tflops = s->bf16_tflops;
    d.peak_source = fmt::format("spec table ({})", s->match);
  }
  if (f.peak_gbs > 0) {
    d.hbm_gbs = f.peak_gbs;
    d.hbm_source = "--peak-gbs";
  }
  if (f.peak_tflops > 0) {
    d.peak_tflops = f.peak_tflops;
    d.peak_source = "--peak-tflops";
  }
  if (d.hbm_source.empty()) d.hbm_source = "unknown";
  if (d.peak_source.empty()) d.peak_source = "unknown";
  return d;
}

// ---------------------------------------------------------------------------------------------
// What a step must move and compute (the roofline's inputs)

struct CostModel {
  double layer_matrix_params = 0;  // q, k, v, o, gate, up, down of one layer
  double layers = 0;
  double lm_head_params = 0;
  double heads_x_head_dim = 0;
  double weight_bytes = 0;        // streamed by every forward: layer matrices, lm_head, norms
  double kv_bytes_per_token = 0;  // K and V of one position, all layers

  CostModel(const ModelConfig& c, size_t weight_elem_bytes, size_t kv_elem_bytes) {
    const double h = c.hidden_size, q = double(c.num_heads) * c.head_dim,
                 kv = double(c.num_kv_heads) * c.head_dim, f = c.intermediate_size;
    layer_matrix_params = q * h + 2 * kv * h + h * q + 3 * f * h;
    layers = c.num_layers;
    lm_head_params = double(c.vocab_size) * h;
    heads_x_head_dim = q;
    weight_bytes = (layers * layer_matrix_params + lm_head_params) * weight_elem_bytes +
                   (2 * layers + 1) * h * 4;  // norms as f32
    kv_bytes_per_token = 2.0 * layers * kv * kv_elem_bytes;
  }

  // One decode step of `batch` rows, each attending to `kv_tokens` positions.
  double DecodeBytes(int batch, double kv_tokens) const {
    return weight_bytes + batch * kv_tokens * kv_bytes_per_token;
  }
  double DecodeFlops(int batch, double kv_tokens) const {
    return 2.0 * batch * (layers * layer_matrix_params + lm_head_params) +
           4.0 * batch * layers * heads_x_head_dim * kv_tokens;  // QK^T and PV
  }
  // A causal prefill of `t` tokens with logits for the last one.
  double PrefillFlops(double t) const {
    return 2.0 * t * layers * layer_matrix_params + 2.0 * lm_head_params +
           4.0 * layers * heads_x_head_dim * (t * (t + 1) / 2);
  }
};

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
}  // namespace tandem

int main(int argc, char** argv) { return tandem::Main(argc, argv); }
