#include "gguf_tokenizer.h"

#include "hf_tokenizer.h"
#include "tandem/engine/tokenizer.h"

namespace tandem {
namespace tokenizer_internal {
namespace {

using nlohmann::json;

constexpr int64_t kControl = 3, kUserDefined = 4;  // llama.cpp token types

std::optional<std::string> TokenAt(const std::vector<std::string>& tokens,
                                   std::optional<int64_t> id) {
  if (!id || *id < 0 || *id >= static_cast<int64_t>(tokens.size())) return std::nullopt;
  return tokens[*id];
}

StatusOr<std::optional<int64_t>> OptionalInt(const GgufFile& g, std::string_view key) {
  if (g.Find(key) == nullptr) return std::optional<int64_t>();
  TANDEM_ASSIGN_OR_RETURN(int64_t v, g.GetInt(key));
  return std::optional<int64_t>(v);
}

}  // namespace

StatusOr<json> GgufTokenizerJson(const GgufFile& g) {
  const std::string& file = g.path();
  TANDEM_ASSIGN_OR_RETURN(std::string model, g.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return InvalidArgumentError(
        "{}: tokenizer.ggml.model \"{}\" is not supported (\"gpt2\", byte-level BPE, only)", file,
        model);
  }
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                          g.GetStringArray("tokenizer.ggml.tokens"));
  TANDEM_ASSIGN_OR_RETURN(std::vector<int64_t> types, g.GetIntArray("tokenizer.ggml.token_type"));
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> merges,
                          g.GetStringArray("tokenizer.ggml.merges"));
  if (types.size() != tokens.size()) {
    return InvalidArgumentError("{}: tokenizer.ggml.token_type has {} entries for {} tokens", file,
                                types.size(), tokens.size());
  }
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!vocab.emplace(tokens[i], static_cast<int64_t>(i)).second) {
      return InvalidArgumentError("{}: token \"{}\" (id {}) appears twice in tokenizer.ggml.tokens",
                                  file, tokens[i], i);
    }
  }
  json merge_pairs = json::array();
  for (size_t i = 0; i < merges.size(); ++i) {
    const size_t sp = merges[i].find(' ');
    if (sp == std::string::npos) {
      return InvalidArgumentError("{}: tokenizer.ggml.merges[{}] \"{}\" is not \"a b\"", file, i,
                                  merges[i]);
    }
    merge_pairs.push_back(json::array({merges[i].substr(0, sp), merges[i].substr(sp + 1)}));
  }
  json added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (types[i] != kControl && types[i] != kUserDefined) continue;
    added.push_back({{"id", i},
                     {"content", tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", types[i] == kControl}});
  }
  json j = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", std::move(added)},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "Digits"}, {"individual_digits", true}},
                                       {{"type", "ByteLevel"},
                                        {"add_prefix_space", false},
                                        {"trim_offsets", true},
                                        {"use_regex", true}}})}}},
      {"post_processor",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", false},
        {"use_regex", true}}},
      {"decoder",
       {{"type", "ByteLevel"},
        {"add_prefix_space", true},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", std::move(vocab)},
        {"merges", std::move(merge_pairs)}}},
  };
  return j;
}

StatusOr<TokenizerConfig> GgufTokenizerConfig(const GgufFile& g) {
  TokenizerConfig config;
  config.present = true;
  TANDEM_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                          g.GetStringArray("tokenizer.ggml.tokens"));
  TANDEM_ASSIGN_OR_RETURN(bool add_bos, g.GetBool("tokenizer.ggml.add_bos_token", false));
  TANDEM_ASSIGN_OR_RETURN(bool add_eos, g.GetBool("tokenizer.ggml.add_eos_token", false));
  config.add_bos_token = add_bos;
  config.add_eos_token = add_eos;
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> bos,
                          OptionalInt(g, "tokenizer.ggml.bos_token_id"));
  TANDEM_ASSIGN_OR_RETURN(std::optional<int64_t> eos,
                          OptionalInt(g, "tokenizer.ggml.eos_token_id"));
  config.bos_token = TokenAt(tokens, bos);
  config.eos_token = TokenAt(tokens, eos);
  if (g.Find("tokenizer.chat_template") != nullptr) {
    TANDEM_ASSIGN_OR_RETURN(std::string t, g.GetString("tokenizer.chat_template"));
    if (!t.empty()) config.chat_template = std::move(t);
  }
  return config;
}

}  // namespace tokenizer_internal

StatusOr<std::unique_ptr<Tokenizer>> LoadGgufTokenizer(const std::filesystem::path& file) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(file));
  TANDEM_ASSIGN_OR_RETURN(nlohmann::json j, tokenizer_internal::GgufTokenizerJson(*gguf));
  TANDEM_ASSIGN_OR_RETURN(tokenizer_internal::TokenizerConfig config,
                          tokenizer_internal::GgufTokenizerConfig(*gguf));
  return tokenizer_internal::MakeHfTokenizer(j, config, gguf->path());
}

}  // namespace tandem
