#include "tokenizer_config.h"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace tandem::tokenizer_internal {
namespace {

std::optional<std::string> TokenString(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    return v["content"].get<std::string>();
  }
  return std::nullopt;
}

}  // namespace

StatusOr<std::string> ReadFileToString(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return NotFoundError("{}: cannot open file", file.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLossError("{}: read error", file.string());
  return ss.str();
}

StatusOr<TokenizerConfig> ReadTokenizerConfig(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return TokenizerConfig();
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  return ParseTokenizerConfig(text, file.string());
}

StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view text, const std::string& source) {
  TokenizerConfig config;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError("{}: not a JSON object", source);
  }
  config.present = true;
  if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) {
    config.add_bos_token = j["add_bos_token"].get<bool>();
  }
  if (j.contains("add_eos_token") && j["add_eos_token"].is_boolean()) {
    config.add_eos_token = j["add_eos_token"].get<bool>();
  }
  if (j.contains("bos_token")) config.bos_token = TokenString(j["bos_token"]);
  if (j.contains("eos_token")) config.eos_token = TokenString(j["eos_token"]);
  if (j.contains("chat_template")) {
    const auto& t = j["chat_template"];
    if (t.is_string()) {
      config.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& entry : t) {
        if (entry.is_object() && entry.value("name", "") == "default" &&
            entry.contains("template") && entry["template"].is_string()) {
          config.chat_template = entry["template"].get<std::string>();
        }
      }
    }
  }
  return config;
}

}  // namespace tandem::tokenizer_internal
