#include "tandem/kvtransfer/connection.h"

#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;

using testing_kv::In;

// Deadlines of operations that end by themselves (a connect, a send, a receive of data already
// sent): hang guards only. Deadlines a test expects to expire are short and explicit.
const std::chrono::milliseconds kGuard = testing_kv::kGuard;

struct Pair {
  std::unique_ptr<Listener> listener;
  std::unique_ptr<Connection> client;
  std::unique_ptr<Connection> server;
};

Pair Connect() {
  Pair p;
  auto l = ListenTcp("127.0.0.1", 0);
  EXPECT_TRUE(l.ok()) << l.status().ToString();
  p.listener = std::move(l).value();
  EXPECT_GT(p.listener->port(), 0);
  auto c = ConnectTcp("127.0.0.1", p.listener->port(), In(kGuard));
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  p.client = std::move(c).value();
  auto s = p.listener->Accept(In(kGuard));
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  p.server = std::move(s).value();
  return p;
}

TEST(ConnectionTest, FramingRoundTrip) {
  Pair p = Connect();
  std::string a = "hello ", b = "kv ", c = "pages";
  std::vector<ConstByteSpan> payload = {std::as_bytes(std::span(a)), std::as_bytes(std::span(b)),
                                        std::as_bytes(std::span(c))};
  MessageHeader h{.request_id = 0xdeadbeefcafeULL,
                  .kind = 7,
                  .layer = 29,
                  .page_count = 3,
                  .length = a.size() + b.size() + c.size()};
  ASSERT_TRUE(p.client->Send(h, payload, In(kGuard)).ok());
  ASSERT_TRUE(p.client->Send(MessageHeader{.request_id = 1, .kind = 2}, {}, In(kGuard)).ok());

  auto got = p.server->ReceiveHeader(In(kGuard));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->request_id, h.request_id);
  EXPECT_EQ(got->kind, 7);
  EXPECT_EQ(got->layer, 29);
  EXPECT_EQ(got->page_count, 3u);
  EXPECT_EQ(got->length, h.length);
  // Header first, payload not consumed yet: asking for the next header is refused.
  EXPECT_EQ(p.server->ReceiveHeader(In(kGuard)).status().code(), StatusCode::kFailedPrecondition);
  std::string x(4, '?'), y(10, '?');
  std::vector<ByteSpan> dest = {std::as_writable_bytes(std::span(x)),
                                std::as_writable_bytes(std::span(y))};
  ASSERT_TRUE(p.server->ReceivePayload(dest, In(kGuard)).ok());
  EXPECT_EQ(x + y, "hello kv pages");
  EXPECT_EQ(p.server->payload_remaining(), 0u);
  auto empty = p.server->ReceiveHeader(In(kGuard));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->length, 0u);
  EXPECT_EQ(empty->layer, -1);
}

TEST(ConnectionTest, ScatterGatherManySpansExactBytes) {
  Pair p = Connect();
  std::mt19937_64 rng(42);
  std::vector<std::byte> src(3 * 1024 * 1024 + 17);
  for (auto& b : src) b = std::byte(rng());
  // More spans than IOV_MAX on both sides, of uneven sizes.
  std::vector<ConstByteSpan> out;
  for (size_t off = 0; off < src.size();) {
    size_t n = std::min<size_t>(src.size() - off, 1 + rng() % 1500);
    out.emplace_back(src.data() + off, n);
    off += n;
  }
  std::vector<std::byte> dst(src.size());
  std::vector<ByteSpan> in;
  for (size_t off = 0; off < dst.size();) {
    size_t n = std::min<size_t>(dst.size() - off, 1 + rng() % 2500);
    in.emplace_back(dst.data() + off, n);
    off += n;
  }
  ASSERT_GT(out.size(), 1024u);
  std::thread sender([&] {
    EXPECT_TRUE(
        p.client->Send({.request_id = 5, .kind = 1, .length = src.size()}, out, In(kGuard)).ok());
  });
  auto h = p.server->ReceiveHeader(In(kGuard));
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(p.server->ReceivePayload(in, In(kGuard)).ok());
  sender.join();
  EXPECT_EQ(src, dst);
}

TEST(ConnectionTest, DeadlineWithoutTrafficLeavesConnectionUsable) {
  Pair p = Connect();
  auto start = std::chrono::steady_clock::now();
  auto h = p.server->ReceiveHeader(In(100ms));
  EXPECT_EQ(h.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 100ms) << "ended before its deadline";
  EXPECT_FALSE(p.server->broken());
  ASSERT_TRUE(p.client->Send({.request_id = 9}, {}, In(kGuard)).ok());
  auto again = p.server->ReceiveHeader(In(kGuard));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->request_id, 9u);
}

TEST(ConnectionTest, PayloadReadInPiecesWithinFrameBounds) {
  Pair p = Connect();
  std::string three = "abc";
  ConstByteSpan span = std::as_bytes(std::span(three));
  ASSERT_TRUE(p.client->Send({.request_id = 1, .length = 3}, {&span, 1}, In(kGuard)).ok());
  auto h = p.server->ReceiveHeader(In(kGuard));
  ASSERT_TRUE(h.ok());
  std::string two(2, '?');
  ByteSpan d = std::as_writable_bytes(std::span(two));
  ASSERT_TRUE(p.server->ReceivePayload({&d, 1}, In(kGuard)).ok());
  EXPECT_EQ(two, "ab");
  std::string four(4, '?');
  ByteSpan d4 = std::as_writable_bytes(std::span(four));
  EXPECT_EQ(p.server->ReceivePayload({&d4, 1}, In(kGuard)).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(p.server->DiscardPayload(1, In(kGuard)).ok());
  EXPECT_EQ(p.server->payload_remaining(), 0u);
  // The header's length must match the payload.
  EXPECT_EQ(p.client->Send({.request_id = 2, .length = 1}, {&span, 1}, In(kGuard)).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(p.server->ReceiveHeader(In(30ms)).status().code(), StatusCode::kDeadlineExceeded);
}

TEST(ConnectionTest, PeerCloseIsUnavailable) {
  Pair p = Connect();
  std::thread closer([&] { p.client.reset(); });
  // Ended by the close (UNAVAILABLE), not by the deadline (DEADLINE_EXCEEDED).
  auto h = p.server->ReceiveHeader(In(kGuard));
  closer.join();
  EXPECT_EQ(h.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(h.status().message().find("closed"), std::string::npos) << h.status().message();
  EXPECT_TRUE(p.server->broken());
  std::string x = "x";
  ConstByteSpan s = std::as_bytes(std::span(x));
  EXPECT_FALSE(p.server->Send({.length = 1}, {&s, 1}, In(kGuard)).ok());
}

TEST(ConnectionTest, ShutdownWakesBlockedReader) {
  Pair p = Connect();
  std::optional<Status> got;
  std::thread reader([&] { got = p.server->ReceiveHeader(kNoDeadline).status(); });
  std::this_thread::sleep_for(20ms);  // let it block (the result is the same if it has not)
  p.server->Shutdown();
  reader.join();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled);
}

TEST(ConnectionTest, ConnectRefusedAndAcceptDeadline) {
  auto l = ListenTcp("127.0.0.1", 0);
  ASSERT_TRUE(l.ok());
  auto a = (*l)->Accept(In(50ms));
  EXPECT_EQ(a.status().code(), StatusCode::kDeadlineExceeded);
  int port = (*l)->port();
  l = Status(StatusCode::kCancelled, "drop");  // closes the listener
  auto c = ConnectTcp("127.0.0.1", port, In(kGuard));
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_EQ(ConnectTcp("no such host.invalid", 1, In(kGuard)).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(ConnectionTest, NoFdLeaks) {
  const int before = testing_kv::CountFds();
  for (int i = 0; i < 5; ++i) {
    Pair p = Connect();
    ASSERT_TRUE(p.client->Send({.request_id = 1}, {}, In(kGuard)).ok());
    ASSERT_TRUE(p.server->ReceiveHeader(In(kGuard)).ok());
  }
  EXPECT_EQ(testing_kv::CountFds(), before);
}

}  // namespace
}  // namespace tandem
