// ModelConfig from a GGUF file's metadata (private to tandem_engine; LoadModelConfig dispatches).
#pragma once

#include "tandem/engine/gguf.h"
#include "tandem/engine/model_config.h"

namespace tandem {

// The llama architecture's metadata as tools/gguf_to_hf.py writes it into config.json (see
// LoadModelConfig). INVALID_ARGUMENT naming general.architecture for any other architecture.
StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& gguf);

}  // namespace tandem
