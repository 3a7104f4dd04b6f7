#include "tandem/router/prefix_affinity.h"

#include <algorithm>
#include <vector>

#include "tandem/common/hash.h"

namespace tandem {
namespace {

constexpr uint64_t kRoot = 0x7461'6e64'656d'6166;  // "tandemaf"

}  // namespace

PrefixAffinity::PrefixAffinity(int32_t block_tokens, size_t max_keys)
    : block_tokens_(std::max(block_tokens, 1)), max_keys_(std::max<size_t>(max_keys, 1)) {}

void PrefixAffinity::TouchLocked(Entry& e) { lru_.splice(lru_.begin(), lru_, e.lru); }

std::optional<AffinityMatch> PrefixAffinity::Lookup(std::span<const int32_t> tokens) {
  const std::vector<uint64_t> keys =
      BlockHashChain(tokens, static_cast<size_t>(block_tokens_), kRoot);
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = keys.size(); i-- > 0;) {
    auto it = keys_.find(keys[i]);
    if (it == keys_.end()) continue;
    TouchLocked(it->second);
    return AffinityMatch{it->second.worker_id, static_cast<int64_t>(i + 1) * block_tokens_};
  }
  return std::nullopt;
}

void PrefixAffinity::Record(std::span<const int32_t> tokens, const std::string& worker_id) {
  const std::vector<uint64_t> keys =
      BlockHashChain(tokens, static_cast<size_t>(block_tokens_), kRoot);
  std::lock_guard<std::mutex> lock(mu_);
  // Deepest first, so the shallow (shared) blocks end up most recent and outlive the deep ones.
  for (size_t i = keys.size(); i-- > 0;) {
    auto [it, added] = keys_.try_emplace(keys[i]);
    it->second.worker_id = worker_id;
    if (added) {
      lru_.push_front(keys[i]);
      it->second.lru = lru_.begin();
    } else {
      TouchLocked(it->second);
    }
  }
  while (keys_.size() > max_keys_) {
    keys_.erase(lru_.back());
    lru_.pop_back();
  }
}

size_t PrefixAffinity::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return keys_.size();
}

}  // namespace tandem
