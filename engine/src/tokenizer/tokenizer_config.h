// The few tokenizer_config.json fields Tandem reads (private to tandem_tokenizer).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

struct TokenizerConfig {
  bool present = false;  // the file exists
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<std::string> bos_token;  // string, or the "content" of an AddedToken object
  std::optional<std::string> eos_token;
  std::optional<std::string> chat_template;  // string, or the "default" entry of a list
};

// Reads `file`. A missing file gives a config with present=false; unreadable or malformed JSON
// gives INVALID_ARGUMENT naming the file.
StatusOr<TokenizerConfig> ReadTokenizerConfig(const std::filesystem::path& file);
// The same from the file's text; errors name `source`.
StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text, const std::string& source);

// Reads a whole file; NOT_FOUND naming it when it cannot be opened.
StatusOr<std::string> ReadFileToString(const std::filesystem::path& file);

}  // namespace tandem::tokenizer_internal
