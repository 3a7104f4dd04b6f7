// Per-request output bookkeeping: finish detection (EOS, stop token ids, max_tokens),
// incremental detokenization and stop strings. The engine's Generator and the router both use
// it, so text from a disaggregated layout equals the single-process text by construction:
// an EOS / stop-id token adds no text; a stop string cuts the text where it starts and ends the
// request; text that may be the start of a stop string is held back until it is decided.
//
// Not thread-safe: one per request, driven by one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tandem/engine/detokenizer.h"
#include "tandem/engine/tokenizer.h"

namespace tandem {

struct TextStreamOptions {
  // Tokens to generate at most (>= 1).
  int32_t max_tokens = 1;
  // Ids that end generation unless `ignore_eos`.
  std::vector<int32_t> eos_ids;
  bool ignore_eos = false;
  // Client stop token ids and stop strings.
  std::vector<int32_t> stop_token_ids;
  std::vector<std::string> stop_strings;
};

class TextStream {
 public:
  enum class Finish { kNone, kLength, kStop };

  // `tokenizer` must outlive this object. Without a tokenizer (nullptr) only finishes are
  // decided and no text is produced; stop strings then must be empty.
  TextStream(const Tokenizer* tokenizer, TextStreamOptions options);

  // Accepts one generated token; appends the text that became final to `*text` and returns
  // whether (and why) the request ends with this token. Must not be called after a finish.
  Finish Add(int32_t token, std::string* text);

  int32_t num_generated() const { return num_generated_; }
  bool finished() const { return finished_; }

 private:
  TextStreamOptions options_;
  std::unique_ptr<IncrementalDetokenizer> detok_;  // null without a tokenizer
  std::string pending_;
  int32_t num_generated_ = 0;
  bool finished_ = false;
};

}  // namespace tandem
