// What the router needs to know about the served model, read with the workers' own config reader
// (tandem/engine/model_config.h, the light tandem_model_config library) from the checkpoint
// folder's JSON files or a GGUF file's metadata: the router never loads weights.
//
// Thread safety: a plain value; immutable after loading.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

struct ModelMeta {
  // The folder name (the file name for a .gguf).
  std::string name;
  // config.json "architectures"[0], e.g. "LlamaForCausalLM".
  std::string architecture;
  // config.json "max_position_embeddings": prompt + generated tokens at most.
  int64_t max_context_tokens = 0;
  // config.json "vocab_size".
  int32_t vocab_size = 0;
  // Ids that end generation: generation_config.json "eos_token_id" overrides config.json's
  // (as the engine's model config does). May be empty; the caller then uses the tokenizer's.
  std::vector<int32_t> eos_token_ids;
};

// LoadModelConfig(dir) reduced to what the router needs; its errors (they name the file and the
// key: a model the workers could not load either).
StatusOr<ModelMeta> LoadModelMeta(const std::filesystem::path& dir);

}  // namespace tandem
