// Tokenizer over a Hugging Face tokenizer.json: added tokens -> normalizer -> pre-tokenizer ->
// BPE -> post-processor for Encode; decoder chain for Decode.
#include <filesystem>
#include <memory>

#include <nlohmann/json.hpp>

#include "added_vocabulary.h"
#include "bpe_model.h"
#include "hf_decoder.h"
#include "hf_tokenizer.h"
#include "json_token_id.h"
#include "normalizer.h"
#include "pre_tokenizer.h"
#include "tandem/engine/tokenizer.h"
#include "tokenizer_config.h"
#include "unicode.h"

namespace tandem {
namespace {

using namespace tokenizer_internal;  // NOLINT: private implementation namespace

class HfTokenizer final : public Tokenizer {
 public:
  StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                        bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string TokenBytes(int32_t id) const override;
  bool IsSpecial(int32_t id) const override {
    const AddedToken* t = added_.ById(id);
    return t != nullptr && t->special;
  }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    if (auto id = added_.IdOf(token)) return id;
    return model_->TokenToId(token);
  }
  int32_t vocab_size() const override { return std::max(model_->size(), added_.end_id()); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

  Status Init(const nlohmann::json& j, const TokenizerConfig& config);

 private:
  Status EncodeSegment(std::string_view text, bool at_text_start, std::vector<int32_t>* ids) const;
  Status InitPostProcessor(const nlohmann::json& spec);
  const std::string* TokenString(int32_t id) const {
    if (const AddedToken* t = added_.ById(id)) return &t->content;
    return model_->IdToToken(id);
  }

  AddedVocabulary added_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<HfDecoder> decoder_;
  std::vector<int32_t> prefix_ids_, suffix_ids_;  // post-processor, single sequence
  std::optional<int32_t> bos_id_, eos_id_;
  bool force_bos_ = false, force_eos_ = false;  // tokenizer_config add_bos/eos_token
};

Status HfTokenizer::Init(const nlohmann::json& j, const TokenizerConfig& config) {
  if (!j.contains("model")) return InvalidArgumentError("\"model\" is missing");
  TANDEM_ASSIGN_OR_RETURN(model_, BpeModel::FromJson(j["model"]));
  TANDEM_ASSIGN_OR_RETURN(added_,
                          AddedVocabulary::FromJson(j.value("added_tokens", nlohmann::json())));
  TANDEM_ASSIGN_OR_RETURN(normalizer_,
                          Normalizer::FromJson(j.value("normalizer", nlohmann::json())));
  TANDEM_ASSIGN_OR_RETURN(pre_tokenizer_,
                          PreTokenizer::FromJson(j.value("pre_tokenizer", nlohmann::json())));
  TANDEM_ASSIGN_OR_RETURN(decoder_, HfDecoder::FromJson(j.value("decoder", nlohmann::json())));
  TANDEM_RETURN_IF_ERROR(InitPostProcessor(j.value("post_processor", nlohmann::json())));
  if (config.bos_token.has_value()) {
    bos_id_ = TokenToId(*config.bos_token);
  } else if (!prefix_ids_.empty()) {
    bos_id_ = prefix_ids_.front();
  }
  if (config.eos_token.has_value()) eos_id_ = TokenToId(*config.eos_token);
  force_bos_ = config.add_bos_token.value_or(false) && bos_id_.has_value();
  force_eos_ = config.add_eos_token.value_or(false) && eos_id_.has_value();
  return Status::Ok();
}

Status HfTokenizer::InitPostProcessor(const nlohmann::json& spec) {
  if (spec.is_null()) return Status::Ok();
  const std::string type = spec.value("type", "");
  if (type == "Sequence") {
    for (const auto& p : spec.at("processors")) TANDEM_RETURN_IF_ERROR(InitPostProcessor(p));
  } else if (type == "ByteLevel") {
    // Offsets only; ids unchanged.
  } else if (type == "TemplateProcessing") {
    const auto& special = spec.value("special_tokens", nlohmann::json::object());
    bool after_sequence = false;
    for (const auto& item : spec.at("single")) {
      if (item.contains("Sequence")) {
        after_sequence = true;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        if (!special.contains(name)) {
          return InvalidArgumentError("post_processor: special token '{}' is not defined", name);
        }
        for (const auto& id : special[name].at("ids")) {
          TANDEM_ASSIGN_OR_RETURN(int32_t v, JsonTokenId(id, "post_processor.special_tokens"));
          (after_sequence ? suffix_ids_ : prefix_ids_).push_back(v);
        }
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    TANDEM_ASSIGN_OR_RETURN(int32_t cls, JsonTokenId(spec.at("cls").at(1), "post_processor.cls"));
    TANDEM_ASSIGN_OR_RETURN(int32_t sep, JsonTokenId(spec.at("sep").at(1), "post_processor.sep"));
    prefix_ids_.push_back(cls);
    suffix_ids_.push_back(sep);
  } else {
    return UnimplementedError("post_processor type '{}' is not supported", type);
  }
  return Status::Ok();
}

Status HfTokenizer::EncodeSegment(std::string_view text, bool at_text_start,
                                  std::vector<int32_t>* ids) const {
  TANDEM_ASSIGN_OR_RETURN(std::string normalized, normalizer_->Apply(std::string(text)));
  for (const Segment& seg : added_.Split(normalized, /*normalized=*/true)) {
    if (seg.id >= 0) {
      ids->push_back(seg.id);
      continue;
    }
    TANDEM_ASSIGN_OR_RETURN(auto pieces,
                            pre_tokenizer_->Split(normalized.substr(seg.begin, seg.end - seg.begin),
                                                  at_text_start && seg.begin == 0));
    for (const std::string& piece : pieces) model_->Encode(piece, ids);
  }
  return Status::Ok();
}

StatusOr<std::vector<int32_t>> HfTokenizer::Encode(std::string_view text,
                                                   bool add_special_tokens) const {
  if (!IsValidUtf8(text)) return InvalidArgumentError("text is not valid UTF-8");
  std::vector<int32_t> ids;
  if (add_special_tokens) ids = prefix_ids_;
  for (const Segment& seg : added_.Split(text, /*normalized=*/false)) {
    if (seg.id >= 0) {
      ids.push_back(seg.id);
    } else {
      TANDEM_RETURN_IF_ERROR(
          EncodeSegment(text.substr(seg.begin, seg.end - seg.begin), seg.begin == 0, &ids));
    }
  }
  if (add_special_tokens) {
    ids.insert(ids.end(), suffix_ids_.begin(), suffix_ids_.end());
    if (force_bos_ && (ids.empty() || ids.front() != *bos_id_)) ids.insert(ids.begin(), *bos_id_);
    if (force_eos_ && (ids.empty() || ids.back() != *eos_id_)) ids.push_back(*eos_id_);
  }
  return ids;
}

std::string HfTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* s = TokenString(id);
    if (s == nullptr || (skip_special && IsSpecial(id))) continue;
    tokens.push_back(*s);
  }
  return decoder_->Decode(std::move(tokens));
}

std::string HfTokenizer::TokenBytes(int32_t id) const {
  const std::string* s = TokenString(id);
  if (s == nullptr) return "";
  return decoder_->TokenBytes(*s);
}

}  // namespace

namespace tokenizer_internal {

StatusOr<std::unique_ptr<Tokenizer>> MakeHfTokenizer(const nlohmann::json& j,
                                                     const TokenizerConfig& config,
                                                     const std::string& source) {
  if (!j.is_object()) return InvalidArgumentError("{}: not a JSON object", source);
  auto tok = std::make_unique<HfTokenizer>();
  try {
    Status s = tok->Init(j, config);
    if (!s.ok()) return Status(s.code(), fmt::format("{}: {}", source, s.message()));
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError("{}: {}", source, e.what());
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tokenizer_internal

StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizerJson(const std::filesystem::path& file) {
  TANDEM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(file));
  const std::filesystem::path config_file = file.parent_path() / "tokenizer_config.json";
  TANDEM_ASSIGN_OR_RETURN(TokenizerConfig config, ReadTokenizerConfig(config_file));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError("{}: {}", file.string(), e.what());
  }
  return MakeHfTokenizer(j, config, file.string());
}

}  // namespace tandem
