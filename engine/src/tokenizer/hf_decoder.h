// Hugging Face tokenizer.json decoders: ByteLevel, Replace (String), ByteFallback, Fuse, Strip,
// Metaspace and Sequence; null joins tokens with " " as Hugging Face does.
//
// Thread safety: immutable after construction.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

class HfDecoder {
 public:
  static StatusOr<std::unique_ptr<HfDecoder>> FromJson(const nlohmann::json& spec);

  // Text for a token-string sequence: the decode chain, then invalid UTF-8 -> U+FFFD.
  std::string Decode(std::vector<std::string> tokens) const;
  // The raw bytes one token stands for inside a decoded stream (no stripping, no U+FFFD).
  std::string TokenBytes(const std::string& token) const;

 private:
  struct Step {
    enum Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
    std::string a;  // Replace pattern / Strip content / Metaspace replacement
    std::string b;  // Replace content
    int start = 0, stop = 0;
    bool prepend = true;  // Metaspace: strip the space its prepend added to the first token
  };
  Status AddSteps(const nlohmann::json& spec);

  bool null_ = false;
  std::vector<Step> steps_;
};

}  // namespace tandem::tokenizer_internal
