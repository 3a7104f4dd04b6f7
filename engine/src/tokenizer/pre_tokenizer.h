// Hugging Face tokenizer.json pre-tokenizers: ByteLevel, Split (Regex or String pattern, every
// behavior, invert), Digits, Metaspace and Sequence. They cut a normalized text segment into
// pieces that the BPE model encodes one by one.
//
// Thread safety: immutable after construction (regexes are compiled once, at load).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "regex.h"
#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

class PreTokenizer {
 public:
  // `spec` is tokenizer.json's "pre_tokenizer" value (null: the whole segment is one piece).
  static StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& spec);

  // Splits `segment` (valid UTF-8). `at_text_start` says the segment begins the input text
  // (Metaspace prepend_scheme "first"). Empty pieces are dropped.
  StatusOr<std::vector<std::string>> Split(std::string segment, bool at_text_start) const;

  // True when a ByteLevel step maps pieces to the byte-level alphabet.
  bool byte_level() const { return byte_level_; }

 private:
  enum class Behavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
  struct Step {
    enum Kind { kSplit, kByteLevel, kMetaspace } kind;
    std::unique_ptr<Regex> regex;  // kSplit; kByteLevel with use_regex
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    bool add_prefix_space = false;  // kByteLevel
    std::string replacement;        // kMetaspace
    std::string prepend_scheme;     // kMetaspace: "always", "first" or "never"
    bool split = true;              // kMetaspace
  };
  Status AddSteps(const nlohmann::json& spec);
  static StatusOr<std::vector<std::string>> SplitPiece(const std::string& piece, const Regex& re,
                                                       Behavior behavior, bool invert);

  std::vector<Step> steps_;
  bool byte_level_ = false;
};

}  // namespace tandem::tokenizer_internal
