// Tokenizer over a SentencePiece tokenizer.model (libsentencepiece).
//
// This is the only file that includes sentencepiece_processor.h: that header declares its own
// absl::string_view, which clashes with real abseil (pulled in by gRPC headers). Keep it here.
#include <sentencepiece_processor.h>

#include <algorithm>
#include <filesystem>
#include <memory>

#include "tandem/engine/tokenizer.h"
#include "tokenizer_config.h"
#include "unicode.h"

namespace tandem {
namespace {

using namespace tokenizer_internal;  // NOLINT: private implementation namespace

constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 '▁'

std::string ReplaceSpaceSymbol(std::string_view piece) {
  std::string out;
  for (size_t pos = 0; pos < piece.size();) {
    if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out.push_back(' ');
      pos += kSpaceSymbol.size();
    } else {
      out.push_back(piece[pos++]);
    }
  }
  return out;
}

// Hugging Face's slow Llama tokenizer semantics (legacy mode) on top of SentencePiece:
// control and unknown pieces written in the text are matched first; each plain chunk is
// encoded by SentencePiece (which adds its dummy "▁" prefix). Decode joins piece texts,
// turns byte pieces into bytes (invalid bytes -> one U+FFFD each, as SentencePiece does) and
// drops the first leading space, which the dummy prefix produced.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  Status Init(const std::filesystem::path& file, const TokenizerConfig& config);

  StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                        bool add_special_tokens) const override;
  std::string Decode(std::span<const int32_t> ids, bool skip_special) const override;
  std::string TokenBytes(int32_t id) const override;
  bool IsSpecial(int32_t id) const override {
    return InRange(id) && (sp_.IsControl(id) || sp_.IsUnknown(id));
  }
  std::optional<int32_t> TokenToId(std::string_view token) const override {
    int id = sp_.PieceToId(token);
    if (id < 0 || id >= vocab_size() || (sp_.IsUnknown(id) && sp_.IdToPiece(id) != token)) {
      return std::nullopt;
    }
    return id;
  }
  int32_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }

 private:
  bool InRange(int32_t id) const { return id >= 0 && id < sp_.GetPieceSize(); }

  sentencepiece::SentencePieceProcessor sp_;
  std::vector<std::pair<std::string, int32_t>> specials_;  // longest first
  std::optional<int32_t> bos_id_, eos_id_;
  bool add_bos_ = true, add_eos_ = false;
  bool dummy_prefix_ = true;
};

Status SentencePieceTokenizer::Init(const std::filesystem::path& file,
                                    const TokenizerConfig& config) {
  auto status = sp_.Load(file.string());
  if (!status.ok()) return InvalidArgumentError("{}: {}", file.string(), status.ToString());
  for (int id = 0; id < sp_.GetPieceSize(); ++id) {
    if ((sp_.IsControl(id) || sp_.IsUnknown(id)) && !sp_.IdToPiece(id).empty()) {
      specials_.emplace_back(sp_.IdToPiece(id), id);
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  auto lookup = [&](const std::optional<std::string>& name,
                    int fallback) -> std::optional<int32_t> {
    if (name.has_value()) return TokenToId(*name);
    if (fallback >= 0) return fallback;
    return std::nullopt;
  };
  bos_id_ = lookup(config.bos_token, sp_.bos_id());
  eos_id_ = lookup(config.eos_token, sp_.eos_id());
  add_bos_ = config.add_bos_token.value_or(true);
  add_eos_ = config.add_eos_token.value_or(false);
  std::vector<int> probe;
  if (sp_.Encode("a", &probe).ok() && !probe.empty()) {
    dummy_prefix_ = sp_.IdToPiece(probe[0]).compare(0, kSpaceSymbol.size(), kSpaceSymbol) == 0;
  }
  return Status::Ok();
}

StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(std::string_view text,
                                                              bool add_special_tokens) const {
  if (!IsValidUtf8(text)) return InvalidArgumentError("text is not valid UTF-8");
  std::vector<int32_t> ids;
  if (add_special_tokens && add_bos_ && bos_id_.has_value()) ids.push_back(*bos_id_);
  std::vector<int> chunk_ids;
  auto encode_chunk = [&](std::string_view chunk) -> Status {
    if (chunk.empty()) return Status::Ok();
    auto s = sp_.Encode(chunk, &chunk_ids);
    if (!s.ok()) return InternalError("sentencepiece encode failed: {}", s.ToString());
    ids.insert(ids.end(), chunk_ids.begin(), chunk_ids.end());
    return Status::Ok();
  };
  size_t chunk_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    if (text[pos] == '<') {
      for (const auto& s : specials_) {
        if (text.compare(pos, s.first.size(), s.first) == 0) {
          hit = &s;
          break;
        }
      }
    }
    if (hit == nullptr) {
      ++pos;
      continue;
    }
    TANDEM_RETURN_IF_ERROR(encode_chunk(text.substr(chunk_start, pos - chunk_start)));
    ids.push_back(hit->second);
    pos += hit->first.size();
    chunk_start = pos;
  }
  TANDEM_RETURN_IF_ERROR(encode_chunk(text.substr(chunk_start)));
  if (add_special_tokens && add_eos_ && eos_id_.has_value()) ids.push_back(*eos_id_);
  return ids;
}

std::string SentencePieceTokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string out, bytes;
  auto flush_bytes = [&] {
    out += Utf8LossyPerByte(bytes);
    bytes.clear();
  };
  for (int32_t id : ids) {
    if (!InRange(id) || (skip_special && IsSpecial(id))) continue;
    if (sp_.IsByte(id)) {
      bytes += TokenBytes(id);
      continue;
    }
    flush_bytes();
    out += TokenBytes(id);
  }
  flush_bytes();
  if (dummy_prefix_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

std::string SentencePieceTokenizer::TokenBytes(int32_t id) const {
  if (!InRange(id)) return "";
  const std::string& piece = sp_.IdToPiece(id);
  if (IsSpecial(id)) return piece;
  if (sp_.IsByte(id)) {
    // "<0xAB>"
    return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
  }
  return ReplaceSpaceSymbol(piece);
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceModel(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) return NotFoundError("{}: no such file", file.string());
  TANDEM_ASSIGN_OR_RETURN(TokenizerConfig config,
                          ReadTokenizerConfig(file.parent_path() / "tokenizer_config.json"));
  auto tok = std::make_unique<SentencePieceTokenizer>();
  TANDEM_RETURN_IF_ERROR(tok->Init(file, config));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace tandem
