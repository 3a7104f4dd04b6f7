// The one parser of Hugging Face tokenizer.json (private to tandem_tokenizer): from a file, or from
// a JSON value built in memory (a GGUF file's vocabulary).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "tandem/engine/tokenizer.h"
#include "tokenizer_config.h"

namespace tandem::tokenizer_internal {

// A tokenizer from the tokenizer.json value `j` and its tokenizer_config `config`. Errors are
// prefixed with `source` (the file the JSON came from).
StatusOr<std::unique_ptr<Tokenizer>> MakeHfTokenizer(const nlohmann::json& j,
                                                     const TokenizerConfig& config,
                                                     const std::string& source);

}  // namespace tandem::tokenizer_internal
