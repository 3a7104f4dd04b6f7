// cuda_runner_bench's model: the flags, the Llama-3-8B (or tiny) shape and workload they
// select, the random bf16 weights, and what one step must move and compute (the roofline's
// inputs). The measurements and the report are in cuda_runner_bench.cc, the device and its
// limits in cuda_runner_bench_device.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/model_config.h"
#include "tandem/engine/weights.h"

namespace tandem::bench {

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
StatusOr<ModelConfig> MakeConfig(const Flags& f);

Workload MakeWorkload(const Flags& f);

// ---------------------------------------------------------------------------------------------
// Random weights

// `elems` random bf16 values, uniform in (-scale, scale), in a shared memfd mapping (an anonymous
// private one if memfd_create fails). The values depend only on `seed`, not on the threads.
class RandomBf16Buffer {
 public:
  static StatusOr<std::unique_ptr<RandomBf16Buffer>> Create(int64_t elems, uint64_t seed,
                                                            float scale);
  ~RandomBf16Buffer();
  RandomBf16Buffer(const RandomBf16Buffer&) = delete;
  RandomBf16Buffer& operator=(const RandomBf16Buffer&) = delete;

  const uint16_t* data() const { return data_; }
  int64_t elems() const { return elems_; }

 private:
  RandomBf16Buffer(void* p, int64_t elems) : data_(static_cast<uint16_t*>(p)), elems_(elems) {}

  void Fill(uint64_t seed, float scale);

  uint16_t* data_;
  int64_t elems_;
};

// Elements the shared buffer needs: the largest matrix plus slack for distinct offsets.
int64_t BufferElems(const ModelConfig& c);

std::unique_ptr<ModelWeights> MakeWeights(const ModelConfig& c, const RandomBf16Buffer& buf);

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

}  // namespace tandem::bench
