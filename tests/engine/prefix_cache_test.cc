// PrefixCache: hash-chain keys, reference counts through the BlockAllocator, LRU eviction of
// idle blocks only, and allocation falling back to eviction.
#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include "tandem/engine/prefix_cache.h"

namespace tandem {
namespace {

KvGeometry Geometry(int32_t page_size = 4) {
  KvGeometry g;
  g.num_layers = 2;
  g.num_kv_heads = 1;
  g.head_dim = 8;
  g.page_size = page_size;
  return g;
}

std::vector<int32_t> Tokens(int32_t n, int32_t first = 0) {
  std::vector<int32_t> t(n);
  std::iota(t.begin(), t.end(), first);
  return t;
}

TEST(PrefixCacheTest, KeysChainAndFoldModelAndLayout) {
  BlockAllocator a(8);
  PrefixCache c(a, /*model_hash=*/1, Geometry());
  const auto t = Tokens(10);  // two full blocks, a partial one
  const auto keys = c.BlockKeys(t);
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_NE(keys[0], keys[1]);
  // A block's key depends on everything before it.
  auto other = t;
  other[0] = 99;
  EXPECT_NE(c.BlockKeys(other)[1], keys[1]);
  // Same tokens under another model, page size or dtype: other keys.
  PrefixCache other_model(a, 2, Geometry());
  EXPECT_NE(other_model.BlockKeys(t)[0], keys[0]);
  KvGeometry g = Geometry();
  g.dtype = DType::kBF16;
  EXPECT_NE(PrefixCache::RootKey(1, g), PrefixCache::RootKey(1, Geometry()));
  EXPECT_NE(PrefixCache::RootKey(1, Geometry(8)), PrefixCache::RootKey(1, Geometry()));
}

TEST(PrefixCacheTest, MatchesLongestFullBlockPrefixAndCountsReferences) {
  BlockAllocator a(8);
  PrefixCache c(a, 1, Geometry());
  const auto prompt = Tokens(10);
  auto first = c.Allocate(prompt, 3, 9);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->cached_blocks, 0);
  c.Insert(prompt, first->blocks, 10);  // two full blocks cached
  EXPECT_EQ(a.ref_count(first->blocks[0]), 2);
  EXPECT_EQ(a.ref_count(first->blocks[2]), 1) << "a partial block is never cached";
  EXPECT_EQ(c.stats().cached_blocks, 2);
  EXPECT_EQ(c.stats().idle_blocks, 0);

  // Same first block, different second: one block matches.
  auto p2 = prompt;
  p2[5] = 77;
  auto second = c.Allocate(p2, 3, 9);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->cached_blocks, 1);
  EXPECT_EQ(second->blocks[0], first->blocks[0]);
  EXPECT_EQ(a.ref_count(first->blocks[0]), 3);

  // max_cached_tokens caps the match: an 8-token prompt whose last token must be computed
  // matches one block, not two.
  auto third = c.Allocate(std::span(prompt).first(8), 2, 7);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->cached_blocks, 1);

  c.Release(first->blocks);
  c.Release(second->blocks);
  c.Release(third->blocks);
  EXPECT_EQ(c.stats().idle_blocks, 2);
  EXPECT_EQ(c.BlocksInUse(), 0);
  EXPECT_EQ(a.num_used(), 2) << "the cache keeps its references";
  const PrefixCacheStats s = c.stats();
  EXPECT_EQ(s.lookup_tokens, 10 + 10 + 8);
  EXPECT_EQ(s.hit_tokens, 4 + 4);
}

TEST(PrefixCacheTest, DuplicateInsertKeepsTheFirstBlock) {
  BlockAllocator a(8);
  PrefixCache c(a, 1, Geometry());
  const auto t = Tokens(8);
  auto x = c.Allocate(t, 2, 7);
  auto y = c.Allocate(t, 2, 7);  // admitted before x computed: no hit
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_EQ(y->cached_blocks, 0);
  c.Insert(t, x->blocks, 8);
  c.Insert(t, y->blocks, 8);
  EXPECT_EQ(c.stats().cached_blocks, 2);
  EXPECT_EQ(a.ref_count(y->blocks[0]), 1) << "y's copy stays private";
  c.Release(x->blocks);
  c.Release(y->blocks);
  EXPECT_EQ(a.num_used(), 2);
}

TEST(PrefixCacheTest, EvictsLeastRecentlyUsedIdleBlocksOnly) {
  BlockAllocator a(6);
  PrefixCache c(a, 1, Geometry());
  // Three one-block prompts cached, released in order A, B, C; then A is matched again.
  std::vector<std::vector<int32_t>> prompts = {Tokens(4, 0), Tokens(4, 100), Tokens(4, 200)};
  std::vector<int32_t> block_of;
  for (const auto& p : prompts) {
    auto al = c.AllocateFresh(1);
    ASSERT_TRUE(al.ok());
    c.Insert(p, *al, 4);
    c.Release(*al);
    block_of.push_back((*al)[0]);
  }
  // A held by a running request: in use, never evicted.
  auto held = c.Allocate(Tokens(5, 0), 2, 4);
  ASSERT_TRUE(held.ok());
  ASSERT_EQ(held->cached_blocks, 1);
  EXPECT_EQ(a.num_free(), 2);
  // Needs 3 fresh blocks: 2 free + the LRU idle one (B), not A (in use) nor C (more recent).
  auto big = c.AllocateFresh(3);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(c.stats().evictions, 1);
  EXPECT_EQ(c.stats().cached_blocks, 2);
  auto c_hit = c.Allocate(prompts[2], 1, 4);  // C still cached (so B was the one evicted)
  ASSERT_TRUE(c_hit.ok());
  EXPECT_EQ(c_hit->cached_blocks, 1);
  c.Release(c_hit->blocks);
  // Too much to satisfy even by evicting everything idle: refused, nothing evicted.
  EXPECT_EQ(a.num_free(), 0);
  auto refused = c.AllocateFresh(3);
  EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
  auto refused2 = c.Allocate(Tokens(12, 500), 3, 11);
  EXPECT_EQ(refused2.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(c.stats().cached_blocks, 2);
  EXPECT_EQ(c.stats().lookup_tokens, 5 + 4) << "a refused allocation is not a lookup";
  // A, in use all along, is still cached and matches once released.
  c.Release(held->blocks);
  auto again = c.Allocate(Tokens(5, 0), 2, 4);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->cached_blocks, 1);
  EXPECT_EQ(again->blocks[0], block_of[0]);
  c.Release(again->blocks);
  c.Release(*big);
  EXPECT_EQ(c.BlocksInUse(), 0);
}

// What the workers report to the router: each key's net change since the last report, and the
// whole cache when asked (or after the journal overflowed).
TEST(PrefixCacheTest, ChangesReportEachKeysNetStateAndTheWholeCacheOnRequest) {
  BlockAllocator a(2);
  PrefixCache c(a, 1, Geometry());
  auto insert = [&](int32_t first) {
    auto al = c.AllocateFresh(1);
    EXPECT_TRUE(al.ok());
    if (!al.ok()) return uint64_t{0};
    c.Insert(Tokens(4, first), *al, 4);
    c.Release(*al);
    return c.BlockKeys(Tokens(4, first))[0];
  };
  const uint64_t ka = insert(0), kb = insert(100);
  PrefixCacheChanges ch = c.TakeChanges(false);
  EXPECT_FALSE(ch.full);
  EXPECT_EQ(std::set<uint64_t>(ch.added.begin(), ch.added.end()), (std::set<uint64_t>{ka, kb}));
  EXPECT_TRUE(ch.evicted.empty());
  EXPECT_TRUE(c.TakeChanges(false).added.empty()) << "reported once";
  // C evicts A (LRU), then A comes back and evicts B: A's net state is cached, B's evicted.
  const uint64_t kc = insert(200);
  EXPECT_EQ(insert(0), ka);
  ch = c.TakeChanges(false);
  EXPECT_EQ(std::set<uint64_t>(ch.added.begin(), ch.added.end()), (std::set<uint64_t>{ka, kc}));
  EXPECT_EQ(ch.evicted, std::vector<uint64_t>{kb});
  // The whole cache on request.
  ch = c.TakeChanges(true);
  EXPECT_TRUE(ch.full);
  EXPECT_EQ(std::set<uint64_t>(ch.added.begin(), ch.added.end()), (std::set<uint64_t>{ka, kc}));
  EXPECT_EQ(c.root_key(), PrefixCache::RootKey(1, Geometry()));
}

TEST(PrefixCacheTest, ReleasedPrefixOutlivesItsContinuation) {
  BlockAllocator a(3);
  PrefixCache c(a, 1, Geometry());
  const auto t = Tokens(8);
  auto al = c.Allocate(t, 2, 8);
  ASSERT_TRUE(al.ok());
  c.Insert(t, al->blocks, 8);
  c.Release(al->blocks);
  // Two fresh blocks: one free, one evicted — the second block (deeper), not the root.
  auto two = c.AllocateFresh(2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(c.stats().evictions, 1);
  c.Release(*two);
  auto hit = c.Allocate(t, 2, 8);
  ASSERT_TRUE(hit.ok());
  EXPECT_EQ(hit->cached_blocks, 1);
  EXPECT_EQ(hit->blocks[0], al->blocks[0]);
  c.Release(hit->blocks);
}

TEST(PrefixCacheTest, DestructionDropsTheCachesReferences) {
  BlockAllocator a(4);
  {
    PrefixCache c(a, 1, Geometry());
    const auto t = Tokens(8);
    auto al = c.Allocate(t, 2, 7);
    ASSERT_TRUE(al.ok());
    c.Insert(t, al->blocks, 8);
    c.Release(al->blocks);
    EXPECT_EQ(a.num_used(), 2);
    EXPECT_EQ(c.EvictIdle(), 2);
    EXPECT_EQ(a.num_used(), 0);
    auto again = c.Allocate(t, 2, 7);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->cached_blocks, 0);
    c.Insert(t, again->blocks, 8);
    c.Release(again->blocks);
    EXPECT_EQ(a.num_used(), 2);
  }
  EXPECT_EQ(a.num_used(), 0);
}

}  // namespace
}  // namespace tandem
