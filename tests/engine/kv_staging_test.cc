// PagePool's host-staging copies (the default memcpy of host pools) and KvStaging over a host
// pool. The device pool's copies are tested in engine_cuda/cuda_runner_test.cc.
#include "tandem/engine/kv_staging.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "tandem/engine/page_pool.h"

namespace tandem {
namespace {

KvGeometry Geometry() {
  KvGeometry g;
  g.num_layers = 3;
  g.num_kv_heads = 2;
  g.head_dim = 4;
  g.page_size = 4;
  g.dtype = DType::kF32;
  return g;
}

void Fill(PagePool& pool, int salt) {
  for (int32_t l = 0; l < pool.geometry().num_layers; ++l) {
    for (int32_t b = 0; b < pool.num_blocks(); ++b) {
      std::byte* p = pool.Page(l, b);
      for (size_t i = 0; i < pool.geometry().PageBytes(); ++i) {
        p[i] = std::byte((salt + 7 * l + 13 * b + i) & 0xff);
      }
    }
  }
}

bool SamePage(const PagePool& a, const PagePool& b, int32_t layer, int32_t block) {
  return std::memcmp(a.Page(layer, block), b.Page(layer, block), a.geometry().PageBytes()) == 0;
}

TEST(PagePoolStagingTest, HostCopiesMoveOnlyTheNamedPagesOfTheLayer) {
  auto src = HostPagePool::Create(Geometry(), 8);
  auto dst = HostPagePool::Create(Geometry(), 8);
  ASSERT_TRUE(src.ok() && dst.ok());
  Fill(**src, 1);
  Fill(**dst, 99);
  const std::vector<int32_t> blocks = {5, 1, 2, 3, 7};  // runs {5}, {1,2,3}, {7}
  ASSERT_TRUE((*src)->CopyToHost(1, blocks, **dst).ok());
  for (int32_t l = 0; l < 3; ++l) {
    for (int32_t b = 0; b < 8; ++b) {
      const bool copied = l == 1 && (b == 5 || (b >= 1 && b <= 3) || b == 7);
      EXPECT_EQ(SamePage(**src, **dst, l, b), copied) << "layer " << l << " block " << b;
    }
  }
  Fill(**src, 50);
  ASSERT_TRUE((*src)->CopyFromHost(2, std::vector<int32_t>{0, 4}, **dst).ok());
  EXPECT_TRUE(SamePage(**src, **dst, 2, 0));
  EXPECT_TRUE(SamePage(**src, **dst, 2, 4));
  EXPECT_FALSE(SamePage(**src, **dst, 2, 1));
  EXPECT_TRUE((*src)->CopyToHost(0, {}, **dst).ok());
}

TEST(PagePoolStagingTest, BadArgumentsAreInvalid) {
  auto a = HostPagePool::Create(Geometry(), 8);
  auto small = HostPagePool::Create(Geometry(), 4);
  KvGeometry other = Geometry();
  other.head_dim = 8;
  auto b = HostPagePool::Create(other, 8);
  ASSERT_TRUE(a.ok() && small.ok() && b.ok());
  const std::vector<int32_t> one = {1};
  EXPECT_EQ((*a)->CopyToHost(0, one, **b).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->CopyToHost(3, one, **small).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->CopyToHost(-1, one, **small).code(), StatusCode::kInvalidArgument);
  const std::vector<int32_t> past = {6};  // in `a`, past `small`
  EXPECT_EQ((*a)->CopyToHost(0, past, **small).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*a)->CopyFromHost(0, std::vector<int32_t>{-1}, **small).code(),
            StatusCode::kInvalidArgument);
}

TEST(KvStagingTest, HostPoolsNeedNoMirror) {
  auto pool = HostPagePool::Create(Geometry(), 8);
  ASSERT_TRUE(pool.ok());
  auto staging = KvStaging::ForPool(**pool);
  ASSERT_TRUE(staging.ok());
  EXPECT_EQ(*staging, nullptr);
}

}  // namespace
}  // namespace tandem
