// Prefix/read-offset incremental detokenization (as in Hugging Face text-generation-inference and
// vLLM): decode ids[prefix_offset_:] and ids[prefix_offset_:read_offset_]; the new text is the
// difference. Decoding a window that starts one emitted chunk back keeps context-dependent
// spacing (SentencePiece's dropped leading space) right, and text ending in U+FFFD is held back
// because it may be an incomplete character that later tokens complete.
#include "tandem/engine/detokenizer.h"

#include <span>

#include "unicode.h"

namespace tandem {

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

std::string IncrementalDetokenizer::Add(int32_t id) {
  ids_.push_back(id);
  std::span<const int32_t> all(ids_);
  const std::string prefix_text =
      tokenizer_.Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  const std::string new_text = tokenizer_.Decode(all.subspan(prefix_offset_), skip_special_);
  if (new_text.size() <= prefix_text.size() ||
      new_text.ends_with(tokenizer_internal::kReplacementChar)) {
    return "";
  }
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return new_text.substr(prefix_text.size());
}

std::string IncrementalDetokenizer::Flush() {
  std::span<const int32_t> all(ids_);
  const std::string prefix_text =
      tokenizer_.Decode(all.subspan(prefix_offset_, read_offset_ - prefix_offset_), skip_special_);
  const std::string new_text = tokenizer_.Decode(all.subspan(prefix_offset_), skip_special_);
  prefix_offset_ = read_offset_ = ids_.size();
  if (new_text.size() <= prefix_text.size()) return "";
  return new_text.substr(prefix_text.size());
}

}  // namespace tandem
