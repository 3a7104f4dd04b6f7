// PrefixAffinity: which decode worker last finished a sequence with a given prefix, so a chat's
// next turn (whose prompt is the last turn's prompt and answer plus a new message) goes back to
// the worker whose prefix cache holds those pages and ships only the new ones.
//
// Keys are a hash chain over the token ids in `block_tokens`-sized blocks (block i's key hashes
// its tokens seeded with block i-1's), so a key names a whole prefix. The router records a
// finished request's prompt + generated tokens under the decode worker that ran it and looks a
// new prompt's deepest recorded prefix up. Bounded: at most `max_keys` keys, least recently
// recorded or matched dropped first. An entry is a hint only: the pool still checks that the
// worker is in rotation, has room and is not much busier than the others, and the decode worker
// itself decides which pages it holds. Each router keeps its own (replicas may disagree).
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>

namespace tandem {

struct AffinityMatch {
  std::string worker_id;       // the decode worker that holds the prefix
  int64_t matched_tokens = 0;  // tokens of the prompt covered by the recorded prefix
};

class PrefixAffinity {
 public:
  // Defaults: 16-token blocks, 1 << 18 keys (about 4 M tokens of prefixes).
  explicit PrefixAffinity(int32_t block_tokens = 16, size_t max_keys = size_t{1} << 18);

  // The deepest recorded prefix of `tokens` (full blocks only), if any.
  std::optional<AffinityMatch> Lookup(std::span<const int32_t> tokens);
  // `worker_id` now holds `tokens` (their full blocks).
  void Record(std::span<const int32_t> tokens, const std::string& worker_id);
  size_t size() const;

 private:
  struct Entry {
    std::string worker_id;
    std::list<uint64_t>::iterator lru;  // position in lru_ (front = most recent)
  };
  void TouchLocked(Entry& e);

  const int32_t block_tokens_;
  const size_t max_keys_;
  mutable std::mutex mu_;  // guards everything below
  std::unordered_map<uint64_t, Entry> keys_;
  std::list<uint64_t> lru_;
};

}  // namespace tandem
