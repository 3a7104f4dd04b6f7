#include "tandem/engine/kv_cache.h"

#include <gtest/gtest.h>

#include <set>

namespace tandem {
namespace {

TEST(BlockAllocatorTest, AllOrNothingAndCounts) {
  BlockAllocator a(10);
  auto x = a.Allocate(4);
  ASSERT_TRUE(x.ok());
  EXPECT_EQ(*x, (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(a.num_used(), 4);
  auto too_many = a.Allocate(7);
  EXPECT_EQ(too_many.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(a.num_used(), 4) << "a refused allocation must take nothing";
  auto y = a.Allocate(6);
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(a.num_free(), 0);
  a.Release(*x);
  EXPECT_EQ(a.num_free(), 4);
  a.Release(*y);
  EXPECT_EQ(a.num_used(), 0);
}

TEST(BlockAllocatorTest, SharedBlocksFreeOnLastRelease) {
  BlockAllocator a(4);
  auto x = a.Allocate(2);
  ASSERT_TRUE(x.ok());
  a.Retain(*x);
  EXPECT_EQ(a.ref_count((*x)[0]), 2);
  a.Release(*x);
  EXPECT_EQ(a.num_used(), 2);
  a.Release(*x);
  EXPECT_EQ(a.num_used(), 0);
  // Freed blocks are handed out again, lowest first.
  auto z = a.Allocate(1);
  EXPECT_EQ((*z)[0], 0);
}

TEST(BlockAllocatorDeathTest, DoubleReleaseAborts) {
  BlockAllocator a(2);
  auto x = a.Allocate(1);
  a.Release(*x);
  EXPECT_DEATH(a.Release(*x), "check failed");
}

TEST(KvCacheTest, PagesDoNotOverlap) {
  KvGeometry l{3, 2, 4, 5};
  KvCache cache(l, 6);
  EXPECT_EQ(l.PageElems(), size_t(2 * 5 * 2 * 4));
  // K and V of every (layer, block, slot) are distinct, in-bounds addresses.
  std::set<const float*> seen;
  for (int layer = 0; layer < 3; ++layer)
    for (int b = 0; b < 6; ++b)
      for (int s = 0; s < 5; ++s) {
        EXPECT_TRUE(seen.insert(cache.Key(layer, b, s)).second);
        EXPECT_TRUE(seen.insert(cache.Value(layer, b, s)).second);
      }
  EXPECT_EQ(cache.BlocksFor(0), 0);
  EXPECT_EQ(cache.BlocksFor(5), 1);
  EXPECT_EQ(cache.BlocksFor(6), 2);
}

}  // namespace
}  // namespace tandem
