// PrefixCache: KV blocks of full page-sized token blocks kept after their sequence ends, so a
// later prompt with the same prefix reuses them instead of computing them again.
//
// Keys. Block i of a token sequence (tokens [i * page_size, (i + 1) * page_size)) has the key
//   key(i) = Hash64(its token ids, seed = key(i - 1)),   key(-1) = RootKey(model hash, geometry)
// so a key names the whole prefix up to the end of its block, and never matches a block of
// another model or KV layout. An entry also keeps its parent key and token ids, and a match
// compares them: a 64-bit collision cannot hand out another prefix's K/V.
//
// Reference counts live in the BlockAllocator: the cache holds one reference on every block it
// caches; a caller that matched a prefix holds one more per block until it releases them. A
// cached block that nobody but the cache references is "idle" — evictable. Eviction is LRU over
// idle blocks (a block's stamp is its last match, insert or release through the cache; a
// sequence's blocks are stamped deepest first so a prefix outlives its continuations) and
// happens only when an allocation cannot be met from free blocks. A block in use is never
// evicted. Cached blocks are never written: only full blocks whose K/V are complete are
// inserted, and a sequence that matched them starts computing after them.
//
// Thread safety: every method may be called from any thread (one mutex; the allocator's own
// mutex is taken inside it, never the other way round). Callers that allocate or release blocks
// of the same allocator without going through the cache stay correct, but their releases do not
// refresh LRU stamps.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "tandem/common/kv_geometry.h"
#include "tandem/common/status.h"
#include "tandem/engine/block_allocator.h"

namespace tandem {

struct PrefixCacheStats {
  int64_t lookup_tokens = 0;  // tokens of every sequence admitted through Allocate
  int64_t hit_tokens = 0;     // of those, tokens whose K/V came from the cache
  int64_t evictions = 0;      // blocks evicted to make room
  int32_t cached_blocks = 0;  // blocks the cache holds (in use or idle)
  int32_t idle_blocks = 0;    // cached blocks nobody else references (evictable)
};

// What a cache holds now, against what it held at the previous TakeChanges: reported to the
// router in heartbeats, which keeps an index of every worker's cached prefixes.
struct PrefixCacheChanges {
  std::vector<uint64_t> added;    // keys cached since then (every cached key when `full`)
  std::vector<uint64_t> evicted;  // keys no longer cached (empty when `full`)
  bool full = false;              // `added` is the whole cache: replace, do not apply
};

// A sequence's blocks: the first `cached_blocks` hold a cached prefix (read-only), the rest
// are fresh. The caller owns one reference on each and gives them back with Release.
struct PrefixAllocation {
  std::vector<int32_t> blocks;
  int32_t cached_blocks = 0;
};

class PrefixCache {
 public:
  // `allocator` must outlive the cache. The root key folds in `model_hash` and `geometry`.
  PrefixCache(BlockAllocator& allocator, uint64_t model_hash, const KvGeometry& geometry);
  // Drops the cache's references (idle blocks become free).
  ~PrefixCache();
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  static uint64_t RootKey(uint64_t model_hash, const KvGeometry& geometry);
  // This cache's RootKey: with page_size() what an outsider needs to compute its block keys
  // (BlockHashChain in tandem/common/hash.h).
  uint64_t root_key() const { return root_; }
  // Keys of the full blocks of `tokens` (a trailing partial block has none).
  std::vector<uint64_t> BlockKeys(std::span<const int32_t> tokens) const;
  int32_t page_size() const { return page_size_; }

  // `num_blocks` blocks for a sequence of `tokens`: the longest cached prefix of full blocks
  // covering at most `max_cached_tokens` tokens (the caller leaves the tokens it must compute,
  // e.g. the last prompt token whose logits it needs), then fresh blocks, evicting idle cached
  // blocks (LRU) when too few are free. RESOURCE_EXHAUSTED and nothing taken when even eviction
  // cannot make room; lookup statistics count only successful calls.
  StatusOr<PrefixAllocation> Allocate(std::span<const int32_t> tokens, int32_t num_blocks,
                                      int64_t max_cached_tokens);
  // `n` fresh blocks, evicting idle cached blocks when too few are free.
  StatusOr<std::vector<int32_t>> AllocateFresh(int32_t n);
  // Caches the full blocks among the first `num_tokens` tokens of a sequence whose K/V are
  // written in `blocks` (position order). A block whose key is cached already (the same prefix
  // in another block, or this one) is skipped and stays the caller's alone; each newly cached
  // block gets the cache's reference.
  void Insert(std::span<const int32_t> tokens, std::span<const int32_t> blocks, int64_t num_tokens);
  // Drops the caller's reference on each block; cached ones are stamped as just used.
  void Release(std::span<const int32_t> blocks);
  // Evicts every idle block; returns how many.
  int32_t EvictIdle();

  PrefixCacheStats stats() const;
  // The net change since the previous call (each key's last state), or, with `full` or when
  // more than kMaxJournalKeys keys changed in between, every cached key with `full` set.
  PrefixCacheChanges TakeChanges(bool full);
  static constexpr size_t kMaxJournalKeys = size_t{1} << 16;
  // Blocks referenced by someone other than the cache: allocator blocks in use minus idle ones.
  int32_t BlocksInUse() const;

 private:
  struct Entry {
    int32_t block = -1;
    uint64_t parent = 0;
    std::vector<int32_t> tokens;  // the block's token ids (page_size of them)
    uint64_t stamp = 0;
  };
  // Evicts up to `n` idle blocks, least recently used first; returns how many.
  int32_t EvictLocked(int32_t n);
  int32_t IdleLocked() const;
  int32_t FreeOrIdleLocked() const { return allocator_.num_free() + IdleLocked(); }

  BlockAllocator& allocator_;
  const int32_t page_size_;
  const uint64_t root_;

  mutable std::mutex mu_;  // guards everything below
  std::unordered_map<uint64_t, Entry> entries_;
  std::vector<uint64_t> key_of_block_;  // per block id: its key, when cached
  std::vector<uint8_t> cached_;         // per block id: 1 when cached
  uint64_t clock_ = 0;
  int64_t lookup_tokens_ = 0;
  int64_t hit_tokens_ = 0;
  int64_t evictions_ = 0;
  // Keys changed since the last TakeChanges: true = cached now, false = evicted.
  std::unordered_map<uint64_t, bool> journal_;
  bool journal_overflow_ = false;
  void JournalLocked(uint64_t key, bool cached);
};

}  // namespace tandem
