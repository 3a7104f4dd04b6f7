// The forward pass (CPU backend). Runs any mix of prefill chunks and decode rows in one batch;
// K and V of every input token are written into the sequence's pages, and attention reads
// only from pages, so a sequence's results do not depend on its batch or chunking.
//
// Thread safety: Forward() calls must not overlap on one model (they share scratch memory and
// the KV cache); the model may be moved between threads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/kv_cache.h"
#include "tandem/engine/model_config.h"
#include "tandem/engine/weights.h"
#include "tandem/kernels/cpu/gemm.h"

namespace tandem {

// Tokens of one sequence at positions start_pos .. start_pos + tokens.size() - 1.
struct ForwardChunk {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  // The sequence's blocks; must cover every position up to start_pos + tokens.size() - 1.
  std::span<const int32_t> block_table;
  // Produce logits for the chunk's last token.
  bool want_logits = false;
};

class CpuModel {
 public:
  // Repacks every matrix of `weights` for the panel GEMM, stored as `storage` (bf16 halves the
  // bytes each decode step streams; f32 keeps f32 checkpoints exact). With bf16 the embedding
  // rows are rounded to bf16 too, so every matrix of the model is bf16; norms and biases stay
  // f32.
  CpuModel(const ModelConfig& config, std::shared_ptr<const ModelWeights> weights,
           kernels::cpu::WeightStorage storage = kernels::cpu::WeightStorage::kF32);

  const ModelConfig& config() const { return config_; }
  KvLayout MakeKvLayout(int32_t page_size) const;

  // Runs `chunks` as one batch. `logits` receives [number of chunks with want_logits, vocab]
  // rows in chunk order. `on_layer_done(layer)`, if set, runs after each layer's K/V are in
  // the pages (prefill uses it to ship a layer as soon as it is computed).
  Status Forward(std::span<const ForwardChunk> chunks, KvCache& cache, std::vector<float>* logits,
                 const std::function<void(int32_t layer)>& on_layer_done = nullptr);

 private:
  ModelConfig config_;
  std::shared_ptr<const ModelWeights> weights_;
  std::vector<float> inv_freq_;
  // The matrices of each layer and the LM head, packed for kernels::cpu::Gemm.
  struct PackedLayer {
    kernels::cpu::PackedWeight q, k, v, o, gate, up, down;
  };
  std::vector<PackedLayer> packed_;
  kernels::cpu::PackedWeight lm_head_;
  kernels::cpu::WeightStorage storage_;
};

}  // namespace tandem
