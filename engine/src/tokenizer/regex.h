// A compiled PCRE2 pattern (UTF + UCP, JIT when available) for pre-tokenizer splits.
//
// Thread safety: immutable after Compile; FindAll may run concurrently (match data and JIT
// stack are per thread).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::tokenizer_internal {

class Regex {
 public:
  // Compiles `pattern` once; INVALID_ARGUMENT with PCRE2's message and offset on error.
  static StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Every non-overlapping, non-empty match in valid UTF-8 `text`, leftmost first, as byte
  // [begin, end) pairs.
  StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(std::string_view text) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex() = default;
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// The pattern with literal `s` escaped for PCRE2 (Split with a String pattern).
std::string QuoteRegex(std::string_view s);

}  // namespace tandem::tokenizer_internal
