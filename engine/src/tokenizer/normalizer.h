// Hugging Face tokenizer.json normalizers: null, NFC, NFKC, Prepend, Replace (String pattern),
// Sequence. Applied to text segments that are not added tokens.
//
// Thread safety: immutable after construction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

class Normalizer {
 public:
  // `spec` is tokenizer.json's "normalizer" value (may be null: identity).
  static StatusOr<std::unique_ptr<Normalizer>> FromJson(const nlohmann::json& spec);

  // Normalized form of valid UTF-8 `text`.
  StatusOr<std::string> Apply(std::string text) const;
  bool is_identity() const { return steps_.empty(); }

 private:
  struct Step {
    enum Kind { kNfc, kNfkc, kPrepend, kReplace } kind;
    std::string a;  // Prepend text, or Replace pattern
    std::string b;  // Replace content
  };
  static Status AddSteps(const nlohmann::json& spec, std::vector<Step>* steps);
  std::vector<Step> steps_;
};

}  // namespace tandem::tokenizer_internal
