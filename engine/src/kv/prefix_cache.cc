#include "tandem/engine/prefix_cache.h"

#include <algorithm>
#include <utility>

#include "tandem/common/hash.h"
#include "tandem/common/logging.h"

namespace tandem {
namespace {

// Bump when the meaning of a cached page changes (page layout, what a key covers).
constexpr uint64_t kPrefixKeyVersion = 1;

}  // namespace

PrefixCache::PrefixCache(BlockAllocator& allocator, uint64_t model_hash, const KvGeometry& geometry)
    : allocator_(allocator),
      page_size_(geometry.page_size),
      root_(RootKey(model_hash, geometry)),
      key_of_block_(allocator.num_blocks(), 0),
      cached_(allocator.num_blocks(), 0) {
  TANDEM_CHECK(page_size_ > 0);
}

PrefixCache::~PrefixCache() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int32_t> blocks;
  blocks.reserve(entries_.size());
  for (const auto& [key, e] : entries_) blocks.push_back(e.block);
  allocator_.Release(blocks);
}

uint64_t PrefixCache::RootKey(uint64_t model_hash, const KvGeometry& g) {
  const uint64_t fields[] = {kPrefixKeyVersion,
                             model_hash,
                             static_cast<uint64_t>(g.num_layers),
                             static_cast<uint64_t>(g.num_kv_heads),
                             static_cast<uint64_t>(g.head_dim),
                             static_cast<uint64_t>(g.page_size),
                             static_cast<uint64_t>(g.dtype)};
  return Hash64(fields, sizeof(fields), /*seed=*/0x7072656669780000ull);  // "prefix"
}

std::vector<uint64_t> PrefixCache::BlockKeys(std::span<const int32_t> tokens) const {
  return BlockHashChain(tokens, static_cast<size_t>(page_size_), root_);
}

StatusOr<PrefixAllocation> PrefixCache::Allocate(std::span<const int32_t> tokens,
                                                 int32_t num_blocks, int64_t max_cached_tokens) {
  if (num_blocks < 0) return InvalidArgumentError("cannot allocate {} blocks", num_blocks);
  std::lock_guard<std::mutex> lock(mu_);
  PrefixAllocation out;
  const int64_t limit = std::min<int64_t>({std::max<int64_t>(max_cached_tokens, 0) / page_size_,
                                           static_cast<int64_t>(tokens.size()) / page_size_,
                                           static_cast<int64_t>(num_blocks)});
  uint64_t parent = root_;
  for (int64_t i = 0; i < limit; ++i) {
    const auto block_tokens = tokens.subspan(i * page_size_, page_size_);
    const uint64_t key = ChainHash(parent, block_tokens);
    auto it = entries_.find(key);
    if (it == entries_.end() || it->second.parent != parent ||
        !std::equal(block_tokens.begin(), block_tokens.end(), it->second.tokens.begin())) {
      break;
    }
    out.blocks.push_back(it->second.block);
    parent = key;
  }
  out.cached_blocks = static_cast<int32_t>(out.blocks.size());
  // Ours before eviction runs, so the matched blocks are no longer idle.
  allocator_.Retain(out.blocks);
  const int32_t fresh = num_blocks - out.cached_blocks;
  const int32_t free = allocator_.num_free();
  if (fresh > free) {
    if (free + IdleLocked() < fresh) {
      allocator_.Release(out.blocks);
      return ResourceExhaustedError(
          "KV cache full: {} blocks requested ({} cached), {} of {} free, {} cached idle",
          num_blocks, out.cached_blocks, free, allocator_.num_blocks(), IdleLocked());
    }
    EvictLocked(fresh - free);
  }
  auto more = allocator_.Allocate(fresh);
  if (!more.ok()) {  // another user of the allocator took blocks meanwhile
    allocator_.Release(out.blocks);
    return more.status();
  }
  for (auto b = out.blocks.rbegin(); b != out.blocks.rend(); ++b) {
    entries_[key_of_block_[*b]].stamp = ++clock_;
  }
  out.blocks.insert(out.blocks.end(), more->begin(), more->end());
  lookup_tokens_ += static_cast<int64_t>(tokens.size());
  hit_tokens_ += int64_t{out.cached_blocks} * page_size_;
  return out;
}

StatusOr<std::vector<int32_t>> PrefixCache::AllocateFresh(int32_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  const int32_t free = allocator_.num_free();
  if (n > free && free + IdleLocked() >= n) EvictLocked(n - free);
  return allocator_.Allocate(n);
}

void PrefixCache::Insert(std::span<const int32_t> tokens, std::span<const int32_t> blocks,
                         int64_t num_tokens) {
  const int64_t n = std::min<int64_t>(
      {std::min<int64_t>(num_tokens, static_cast<int64_t>(tokens.size())) / page_size_,
       static_cast<int64_t>(blocks.size())});
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<uint64_t> touched;
  uint64_t parent = root_;
  for (int64_t i = 0; i < n; ++i) {
    const auto block_tokens = tokens.subspan(i * page_size_, page_size_);
    const uint64_t key = ChainHash(parent, block_tokens);
    const int32_t b = blocks[i];
    if (!entries_.contains(key) && !cached_[b]) {
      Entry e;
      e.block = b;
      e.parent = parent;
      e.tokens.assign(block_tokens.begin(), block_tokens.end());
      entries_.emplace(key, std::move(e));
      JournalLocked(key, true);
      key_of_block_[b] = key;
      cached_[b] = 1;
      const int32_t one[] = {b};
      allocator_.Retain(one);
    }
    if (cached_[b] && key_of_block_[b] == key) touched.push_back(key);
    parent = key;
  }
  for (auto k = touched.rbegin(); k != touched.rend(); ++k) entries_[*k].stamp = ++clock_;
}

void PrefixCache::Release(std::span<const int32_t> blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  allocator_.Release(blocks);
  for (auto b = blocks.rbegin(); b != blocks.rend(); ++b) {
    if (cached_[*b]) entries_[key_of_block_[*b]].stamp = ++clock_;
  }
}

int32_t PrefixCache::EvictIdle() {
  std::lock_guard<std::mutex> lock(mu_);
  return EvictLocked(static_cast<int32_t>(entries_.size()));
}

int32_t PrefixCache::EvictLocked(int32_t n) {
  std::vector<std::pair<uint64_t, uint64_t>> idle;  // (stamp, key)
  for (const auto& [key, e] : entries_) {
    if (allocator_.ref_count(e.block) == 1) idle.emplace_back(e.stamp, key);
  }
  const size_t k = std::min(idle.size(), static_cast<size_t>(std::max(n, 0)));
  std::partial_sort(idle.begin(), idle.begin() + k, idle.end());
  std::vector<int32_t> freed;
  freed.reserve(k);
  for (size_t i = 0; i < k; ++i) {
    auto it = entries_.find(idle[i].second);
    freed.push_back(it->second.block);
    cached_[it->second.block] = 0;
    JournalLocked(it->first, false);
    entries_.erase(it);
  }
  allocator_.Release(freed);
  evictions_ += static_cast<int64_t>(k);
  return static_cast<int32_t>(k);
}

int32_t PrefixCache::IdleLocked() const {
  int32_t idle = 0;
  for (const auto& [key, e] : entries_) idle += allocator_.ref_count(e.block) == 1;
  return idle;
}

PrefixCacheStats PrefixCache::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PrefixCacheStats s;
  s.lookup_tokens = lookup_tokens_;
  s.hit_tokens = hit_tokens_;
  s.evictions = evictions_;
  s.cached_blocks = static_cast<int32_t>(entries_.size());
  s.idle_blocks = IdleLocked();
  return s;
}

int32_t PrefixCache::BlocksInUse() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocator_.num_used() - IdleLocked();
}

void PrefixCache::JournalLocked(uint64_t key, bool cached) {
  if (journal_overflow_) return;
  journal_[key] = cached;
  if (journal_.size() > kMaxJournalKeys) {
    journal_overflow_ = true;  // the next report sends the whole cache instead
    journal_.clear();
  }
}

PrefixCacheChanges PrefixCache::TakeChanges(bool full) {
  std::lock_guard<std::mutex> lock(mu_);
  PrefixCacheChanges out;
  if (full || journal_overflow_) {
    out.full = true;
    out.added.reserve(entries_.size());
    for (const auto& [key, e] : entries_) out.added.push_back(key);
  } else {
    for (const auto& [key, cached] : journal_) (cached ? out.added : out.evicted).push_back(key);
  }
  journal_.clear();
  journal_overflow_ = false;
  return out;
}

}  // namespace tandem
