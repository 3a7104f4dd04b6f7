#include "tandem/kvtransfer/layout.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace tandem {
namespace {

using testing_kv::SmallLayout;

TEST(KvPageLayoutTest, PageBytesAndDtypes) {
  KvPageLayout l = SmallLayout();
  EXPECT_EQ(l.PageBytes(), 2u * 4 * 2 * 8 * 4);
  l.dtype = DType::kBF16;
  EXPECT_EQ(l.PageBytes(), 2u * 4 * 2 * 8 * 2);
  EXPECT_EQ(DTypeSize(DType::kF16), 2u);
  EXPECT_EQ(DTypeName(DType::kBF16), "bf16");
}

TEST(KvPageLayoutTest, SerializeRoundTripAndStableFingerprint) {
  KvPageLayout l = SmallLayout();
  std::string s = l.Serialize();
  ASSERT_EQ(s.size(), KvPageLayout::kSerializedSize);
  auto parsed = KvPageLayout::Parse(std::as_bytes(std::span(s.data(), s.size())));
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(*parsed, l);
  EXPECT_EQ(parsed->Fingerprint(), l.Fingerprint());
  EXPECT_FALSE(KvPageLayout::Parse(std::as_bytes(std::span(s.data(), 10))).ok());
}

TEST(KvPageLayoutTest, EveryFieldChangesTheFingerprint) {
  const KvPageLayout base = SmallLayout();
  std::vector<KvPageLayout> variants(7, base);
  variants[0].num_layers++;
  variants[1].num_kv_heads++;
  variants[2].head_dim++;
  variants[3].page_size++;
  variants[4].dtype = DType::kF16;
  variants[5].layout_version++;
  variants[6].model_hash++;
  for (const auto& v : variants) {
    EXPECT_NE(v.Fingerprint(), base.Fingerprint()) << v.Describe();
    EXPECT_EQ(CheckCompatible(base, v).code(), StatusCode::kFailedPrecondition);
  }
  EXPECT_TRUE(CheckCompatible(base, base).ok());
}

TEST(KvPageLayoutTest, MismatchNamesTheField) {
  KvPageLayout local = SmallLayout(), remote = SmallLayout();
  local.page_size = 16;
  remote.page_size = 32;
  Status s = CheckCompatible(local, remote);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "page_size differs: local 16, remote 32");
  remote = local;
  remote.dtype = DType::kBF16;
  EXPECT_EQ(CheckCompatible(local, remote).message(), "dtype differs: local f32, remote bf16");
}

TEST(KvPageLayoutTest, ValidateNamesTheField) {
  KvPageLayout l = SmallLayout();
  EXPECT_TRUE(l.Validate().ok());
  l.head_dim = 0;
  Status s = l.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("head_dim"), std::string::npos);
  EXPECT_NE(SmallLayout().Describe().find("page_size=4"), std::string::npos);
  l = SmallLayout();
  l.page_size = KvPageLayout::kMaxPageSize + 1;
  s = l.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("page_size"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace tandem
