// Incremental detokenization for streaming: never emits part of a UTF-8 character.
//
// Invariant: the concatenation of every Add() result and the final Flush() equals
// tokenizer.Decode(all ids, skip_special). Not thread-safe; one per stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "tandem/engine/tokenizer.h"

namespace tandem {

class IncrementalDetokenizer {
 public:
  // `tokenizer` must outlive this object.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, bool skip_special = true);

  // Appends one token; returns the text that became complete (possibly "").
  std::string Add(int32_t id);
  // Returns whatever is still held back (an incomplete character becomes U+FFFD).
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // first id of the context decoded for the next delta
  size_t read_offset_ = 0;    // first id whose text has not been emitted yet
};

}  // namespace tandem
