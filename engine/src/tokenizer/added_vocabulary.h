// Hugging Face added tokens (tokenizer.json "added_tokens"): found in the input before
// normalization / pre-tokenization, leftmost-longest like Hugging Face's Aho-Corasick matcher,
// honouring lstrip, rstrip, single_word and normalized.
//
// Thread safety: immutable after construction.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

// A piece of text: an added token (id >= 0) or plain text to tokenize (id < 0).
struct Segment {
  int32_t id;
  size_t begin, end;  // byte range in the searched text
};

class AddedVocabulary {
 public:
  // `spec` is tokenizer.json's "added_tokens" array (may be null).
  static StatusOr<AddedVocabulary> FromJson(const nlohmann::json& spec);

  // Splits `text` on the tokens whose `normalized` flag equals `normalized` (the raw input is
  // searched for normalized=false tokens, normalized text for the others).
  std::vector<Segment> Split(std::string_view text, bool normalized) const;

  const AddedToken* ById(int32_t id) const;
  std::optional<int32_t> IdOf(std::string_view content) const;
  // One more than the largest added id (0 when none).
  int32_t end_id() const { return end_id_; }

 private:
  struct Matcher {
    // first byte -> token indices, longest content first
    std::vector<std::vector<size_t>> by_first_byte = std::vector<std::vector<size_t>>(256);
    bool empty = true;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;
  Matcher raw_, normalized_;
  int32_t end_id_ = 0;
};

}  // namespace tandem::tokenizer_internal
