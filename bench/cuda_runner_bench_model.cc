// cuda_runner_bench's model (cuda_runner_bench_model.h): the shape presets and the random
// bf16 weights.
#include "cuda_runner_bench_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <thread>
#include <vector>

namespace tandem::bench {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

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

}  // namespace

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

StatusOr<std::unique_ptr<RandomBf16Buffer>> RandomBf16Buffer::Create(int64_t elems, uint64_t seed,
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

RandomBf16Buffer::~RandomBf16Buffer() { munmap(data_, static_cast<size_t>(elems_) * 2); }

void RandomBf16Buffer::Fill(uint64_t seed, float scale) {
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

}  // namespace tandem::bench
