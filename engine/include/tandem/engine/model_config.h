// Model configuration read from a Hugging Face checkpoint folder (config.json and
// generation_config.json) or a GGUF file's metadata. Model constants (eps, rope theta, …) come
// from here, never literals.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem {

enum class Architecture { kLlama, kMistral, kQwen2 };

std::string_view ArchitectureName(Architecture a);

struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3 };
  Type type = Type::kNone;
  double factor = 1.0;                              // linear and llama3
  double low_freq_factor = 1.0;                     // llama3
  double high_freq_factor = 4.0;                    // llama3
  int64_t original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string arch_name;  // as in config.json, e.g. "LlamaForCausalLM"
  int32_t hidden_size = 0;
  int32_t intermediate_size = 0;
  int32_t num_layers = 0;
  int32_t num_heads = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 0.0;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // Keys a query may see: positions (p - sliding_window, p]. 0 = unlimited.
  int32_t sliding_window = 0;
  // Layers below this index use full attention even with a sliding window (Qwen2's
  // max_window_layers); 0 for Mistral.
  int32_t first_sliding_layer = 0;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;      // Qwen2
  DType dtype = DType::kF32;  // torch_dtype of the checkpoint; a GGUF's most common matrix type
  std::optional<int32_t> bos_token_id;
  // Generation stops at any of these (generation_config.json overrides config.json).
  std::vector<int32_t> eos_token_ids;

  // Sliding window for `layer`, 0 when it attends to the whole context.
  int32_t SlidingWindowForLayer(int32_t layer) const {
    return layer >= first_sliding_layer ? sliding_window : 0;
  }
};

// Reads dir/config.json (required) and dir/generation_config.json (optional).
// Errors name the file and the offending key: unknown architecture, missing or
// inconsistent sizes, unsupported rope_scaling type or torch_dtype.
//
// `dir` may instead name a .gguf file (IsGgufPath): the llama architecture's metadata gives the
// values tools/gguf_to_hf.py writes into config.json — sizes, heads, head_dim
// (attention.key_length), vocab (vocab_size, else the token list), context_length, rms eps and
// rope theta (float32 values read as their shortest decimal), linear rope scaling,
// tie_word_embeddings when there is no output.weight, bos / eos from tokenizer.ggml.*; dtype is the
// most common type of its matrices. INVALID_ARGUMENT naming general.architecture for other
// architectures, and for a rope_freqs.weight tensor (llama3 rope scaling, not stated in metadata).
StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

}  // namespace tandem
