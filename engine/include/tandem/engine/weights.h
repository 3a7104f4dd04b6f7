// Model weights as the checkpoint holds them, for a backend to convert into its own layout.
// Matrices are views into the mapped checkpoint in their stored dtype (f32, f16, bf16 or a
// quantized GGUF type); vectors (norms, biases) are float32 (widened once at load when stored
// otherwise).
#pragma once

#include <filesystem>
#include <memory>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/checkpoint.h"
#include "tandem/engine/model_config.h"

namespace tandem {

// A read-only tensor. `raw` / `dtype`: the stored bytes (a view into the checkpoint mapping).
// `data`: the float32 values — always set for vectors (owned when widened), and for matrices
// only when they are stored as aligned f32 (a view; nullptr otherwise).
struct WeightTensor {
  const void* raw = nullptr;
  DType dtype = DType::kF32;
  const float* data = nullptr;
  std::vector<int64_t> shape;
  std::vector<float> owned;  // empty when `data` points into the checkpoint
};

struct LayerWeights {
  WeightTensor input_norm;              // [hidden]
  WeightTensor q_proj;                  // [heads * head_dim, hidden]
  WeightTensor k_proj;                  // [kv_heads * head_dim, hidden]
  WeightTensor v_proj;                  // [kv_heads * head_dim, hidden]
  WeightTensor q_bias, k_bias, v_bias;  // Qwen2 only: [out]
  WeightTensor o_proj;                  // [hidden, heads * head_dim]
  WeightTensor post_norm;               // [hidden]
  WeightTensor gate_proj;               // [intermediate, hidden]
  WeightTensor up_proj;                 // [intermediate, hidden]
  WeightTensor down_proj;               // [hidden, intermediate]
};

struct ModelWeights {
  WeightTensor embed;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  WeightTensor final_norm;                 // [hidden]
  WeightTensor lm_head;                    // [vocab, hidden]; the embedding when tied
  std::unique_ptr<Checkpoint> checkpoint;  // keeps borrowed views alive

  // Loads every tensor `config` requires from the checkpoint in `dir`, checking shapes.
  // Errors name the file and the tensor.
  static StatusOr<std::unique_ptr<ModelWeights>> Load(const std::filesystem::path& dir,
                                                      const ModelConfig& config);
};

}  // namespace tandem
