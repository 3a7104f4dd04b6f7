#include "tandem/engine/text_stream.h"

#include <algorithm>

namespace tandem {
namespace {

// Bytes at the end of `text` that could begin one of `stops` (the engine's rule).
size_t StopHoldback(const std::string& text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const auto& stop : stops) {
    if (stop.empty()) continue;
    for (size_t len = std::min(text.size(), stop.size() - 1); len > hold; --len) {
      if (text.compare(text.size() - len, len, stop, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  return hold;
}

// Position of the earliest stop string in `text`, or npos.
size_t FindStop(const std::string& text, const std::vector<std::string>& stops) {
  size_t best = std::string::npos;
  for (const auto& stop : stops) {
    if (!stop.empty()) best = std::min(best, text.find(stop));
  }
  return best;
}

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

}  // namespace

TextStream::TextStream(const Tokenizer* tokenizer, TextStreamOptions options)
    : options_(std::move(options)) {
  if (tokenizer)
    detok_ = std::make_unique<IncrementalDetokenizer>(*tokenizer, /*skip_special=*/true);
}

TextStream::Finish TextStream::Add(int32_t token, std::string* text) {
  ++num_generated_;
  const bool is_eos = !options_.ignore_eos && Contains(options_.eos_ids, token);
  const bool is_stop_id = Contains(options_.stop_token_ids, token);
  Finish reason = Finish::kNone;
  if (is_eos || is_stop_id) {
    reason = Finish::kStop;
  } else if (num_generated_ >= options_.max_tokens) {
    reason = Finish::kLength;
  }
  if (detok_ && reason != Finish::kStop) pending_ += detok_->Add(token);
  if (detok_ && reason != Finish::kNone) pending_ += detok_->Flush();
  const size_t stop_at = FindStop(pending_, options_.stop_strings);
  if (stop_at != std::string::npos) {
    text->append(pending_, 0, stop_at);
    pending_.clear();
    reason = Finish::kStop;
  } else if (reason != Finish::kNone) {
    text->append(pending_);
    pending_.clear();
  } else {
    const size_t hold = StopHoldback(pending_, options_.stop_strings);
    text->append(pending_, 0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
  }
  if (reason != Finish::kNone) finished_ = true;
  return reason;
}

}  // namespace tandem
