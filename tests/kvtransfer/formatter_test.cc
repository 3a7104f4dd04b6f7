#include "tandem/kvtransfer/formatter.h"

#include <climits>

#include <gtest/gtest.h>

#include "test_util.h"

namespace tandem {
namespace {

using testing_kv::SmallLayout;

TEST(FormatterTest, AdjacentPagesAreMerged) {
  KvPageLayout l = SmallLayout();
  HostPageBuffer buf(l, 8);
  Formatter f(l);
  std::vector<int32_t> run = {2, 3, 4};
  auto spans = f.SendSpans(buf, 1, run);
  ASSERT_TRUE(spans.ok());
  ASSERT_EQ(spans->size(), 1u);
  EXPECT_EQ((*spans)[0].size(), 3 * l.PageBytes());
  std::vector<int32_t> scattered = {5, 1, 2, 7};
  spans = f.SendSpans(buf, 1, scattered);
  ASSERT_TRUE(spans.ok());
  EXPECT_EQ(spans->size(), 3u);  // 5 | 1,2 | 7
}

TEST(FormatterTest, SenderBlockIMapsToReceiverBlockI) {
  KvPageLayout l = SmallLayout();
  HostPageBuffer src(l, 16), dst(l, 16);
  testing_kv::FillRandom(src, 7);
  Formatter f(l);
  std::vector<int32_t> src_blocks = {9, 3, 4, 12}, dst_blocks = {0, 15, 6, 7};
  for (int32_t layer = 0; layer < l.num_layers; ++layer) {
    auto out = f.SendSpans(src, layer, src_blocks);
    auto in = f.ReceiveSpans(dst, layer, dst_blocks);
    ASSERT_TRUE(out.ok() && in.ok());
    std::vector<std::byte> wire;  // the bytes as they would travel
    for (auto s : *out) wire.insert(wire.end(), s.begin(), s.end());
    ASSERT_EQ(wire.size(), f.LayerBytes(src_blocks.size()));
    size_t off = 0;
    for (auto d : *in) {
      std::memcpy(d.data(), wire.data() + off, d.size());
      off += d.size();
    }
    EXPECT_EQ(off, wire.size());
  }
  testing_kv::ExpectSamePages(src, src_blocks, dst, dst_blocks, l.num_layers);
}

TEST(FormatterTest, BadLayerOrBlockIsInvalidArgument) {
  KvPageLayout l = SmallLayout();
  HostPageBuffer buf(l, 4);
  Formatter f(l);
  std::vector<int32_t> blocks = {0};
  EXPECT_EQ(f.SendSpans(buf, l.num_layers, blocks).status().code(), StatusCode::kInvalidArgument);
  std::vector<int32_t> bad = {0, 4};
  EXPECT_EQ(f.ReceiveSpans(buf, 0, bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(FormatterTest, HandshakeAcceptsSameLayout) {
  KvPageLayout l = SmallLayout();
  Formatter sender(l), receiver(l);
  std::string hs = sender.EncodeHandshake(receiver.fingerprint(), 5);
  EXPECT_TRUE(receiver.CheckHandshake(std::as_bytes(std::span(hs.data(), hs.size())), 5).ok());
  Status pages = receiver.CheckHandshake(std::as_bytes(std::span(hs.data(), hs.size())), 6);
  EXPECT_EQ(pages.code(), StatusCode::kInvalidArgument);
}

TEST(FormatterTest, HandshakeRefusesMismatchNamingTheField) {
  KvPageLayout mine = SmallLayout(), theirs = SmallLayout();
  mine.page_size = 16;
  theirs.page_size = 32;
  Formatter sender(theirs), receiver(mine);
  std::string hs = sender.EncodeHandshake(receiver.fingerprint(), 5);
  Status s = receiver.CheckHandshake(std::as_bytes(std::span(hs.data(), hs.size())), 5);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("page_size differs: local 16, remote 32"), std::string::npos)
      << s.message();
}

TEST(FormatterTest, HandshakeRefusesStaleTicketFingerprint) {
  KvPageLayout l = SmallLayout();
  Formatter sender(l), receiver(l);
  std::string hs = sender.EncodeHandshake(receiver.fingerprint() ^ 1, 5);
  Status s = receiver.CheckHandshake(std::as_bytes(std::span(hs.data(), hs.size())), 5);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(receiver.CheckHandshake({}, 5).code(), StatusCode::kFailedPrecondition);
}

// Found by fuzz_kv_wire: a peer's handshake whose layout fields are huge made the receiver's
// error message compute its page size in overflowing (undefined) int64 arithmetic. Such a layout
// is now invalid, and the message says so instead of a page size.
TEST(FormatterTest, HandshakeWithHugeRemoteFieldsIsRefusedWithoutOverflow) {
  KvPageLayout mine = SmallLayout(), theirs = SmallLayout();
  theirs.num_kv_heads = INT32_MAX;
  theirs.head_dim = INT32_MAX;
  theirs.page_size = INT32_MAX;
  EXPECT_EQ(theirs.Validate().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(theirs.Describe().find("(invalid B/page)"), std::string::npos) << theirs.Describe();
  Formatter receiver(mine);
  std::string hs = theirs.Serialize();
  const uint64_t fp = theirs.Fingerprint(), ticket = receiver.fingerprint();
  const uint32_t pages = 5;
  hs.append(reinterpret_cast<const char*>(&fp), 8);
  hs.append(reinterpret_cast<const char*>(&ticket), 8);
  hs.append(reinterpret_cast<const char*>(&pages), 4);
  Status s = receiver.CheckHandshake(std::as_bytes(std::span(hs.data(), hs.size())), 5);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("invalid B/page"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace tandem
