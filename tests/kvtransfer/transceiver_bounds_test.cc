// The receiver's bounds on inbound connections: connections that never present a request's
// token are closed after the handshake timeout (their threads go, no pages are touched), over
// the connection cap a connection is closed at once, at the pending cap the longest waiting
// pending one is, idle ones are closed (the sender reconnects), and
// transfers keep working meanwhile. No timing assertions: waits end on events.
#include <gtest/gtest.h>

#include <thread>

#include "tandem/common/metrics.h"
#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::Eventually;
using testing_kv::In;
using testing_kv::kGuard;
using testing_kv::kLong;

class TransceiverBoundsTest : public ::testing::Test {
 protected:
  void Start(TransceiverOptions o) {
    layout_ = testing_kv::SmallLayout();
    o.layout = layout_;
    o.metrics = &metrics_;
    auto r = Transceiver::Create(o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    receiver_ = std::move(r).value();
    TransceiverOptions so;
    so.layout = layout_;
    so.listen = false;
    auto s = Transceiver::Create(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    sender_ = std::move(s).value();
  }

  // A connection that sends nothing.
  std::unique_ptr<Connection> Junk() {
    const std::string& ep = receiver_->endpoint();
    const auto colon = ep.rfind(':');
    auto c = ConnectTcp(ep.substr(0, colon), std::stoi(ep.substr(colon + 1)), In(kGuard));
    EXPECT_TRUE(c.ok()) << c.status().ToString();
    return c.ok() ? std::move(c).value() : nullptr;
  }

  // True once the receiver closed `c` (a read ends UNAVAILABLE: peer closed).
  static bool ClosedByPeer(Connection& c) {
    auto h = c.ReceiveHeader(In(kGuard));
    return !h.ok() && h.status().code() == StatusCode::kUnavailable;
  }

  // One whole transfer of two blocks; its status.
  Status Transfer(uint64_t id) {
    HostPageBuffer src(layout_, 4), dst(layout_, 4);
    testing_kv::FillRandom(src, id);
    DoneLatch done;
    Status e = receiver_->ExpectTransfer(id, dst, {2, 3}, In(kLong), done.Callback());
    if (!e.ok()) return e;
    TransferTicket t;
    t.request_id = id;
    t.dest_endpoint = receiver_->endpoint();
    t.dest_blocks = {2, 3};
    t.dest_fingerprint = receiver_->fingerprint();
    t.deadline = In(kLong);
    auto h = sender_->StartSend(t, src, {0, 1});
    if (!h.ok()) return h.status();
    for (int32_t l = 0; l < layout_.num_layers; ++l) {
      if (Status s = sender_->SendLayer(*h, l); !s.ok()) return s;
    }
    Status sent = sender_->Wait(*h);
    auto got = done.Get();
    if (!sent.ok()) return sent;
    if (!got) return DeadlineExceededError("no done");
    if (got->ok()) testing_kv::ExpectSamePages(src, {0, 1}, dst, {2, 3}, layout_.num_layers);
    return *got;
  }

  double Closed(const char* reason) { return metrics_.kv_connections_closed(reason).Value(); }

  Metrics metrics_{MetricRole::kDecode, "m"};
  KvPageLayout layout_;
  std::unique_ptr<Transceiver> receiver_;
  std::unique_ptr<Transceiver> sender_;
};

TEST_F(TransceiverBoundsTest, AConnectionWithoutHandshakeIsClosedAfterTheTimeout) {
  TransceiverOptions o;
  o.handshake_timeout = 200ms;
  Start(o);
  const int threads = testing_kv::CountThreads();
  // A reservation waiting meanwhile: the junk connection never touches it.
  HostPageBuffer dst(layout_, 4);
  DoneLatch reserved;
  ASSERT_TRUE(receiver_->ExpectTransfer(7, dst, {0}, In(kLong), reserved.Callback()).ok());
  auto junk = Junk();
  ASSERT_NE(junk, nullptr);
  EXPECT_TRUE(ClosedByPeer(*junk));
  EXPECT_EQ(receiver_->stats().timed_out_connections, 1);
  EXPECT_EQ(Closed("handshake_timeout"), 1);
  EXPECT_TRUE(Eventually([&] { return receiver_->stats().inbound_connections == 0; }));
  // Its reader thread is gone (joined by the service thread), the reservation untouched.
  junk.reset();
  EXPECT_TRUE(Eventually([&] { return testing_kv::CountThreads() <= threads; }))
      << testing_kv::CountThreads() << " threads, " << threads << " before";
  EXPECT_EQ(receiver_->stats().active_receives, 1);
  EXPECT_EQ(reserved.calls(), 0);
  EXPECT_TRUE(receiver_->Cancel(7).ok());
  EXPECT_TRUE(Transfer(8).ok());
}

// Strangers holding every pending slot without a handshake do not lock senders out: at the cap
// the connection that waited longest makes room, and the sender's transfer goes through at once
// (before, it was refused until a stranger's handshake timeout).
TEST_F(TransceiverBoundsTest, AtThePendingCapTheLongestWaitingConnectionMakesRoom) {
  TransceiverOptions o;
  o.max_pending_connections = 2;
  o.handshake_timeout = kLong;
  Start(o);
  auto a = Junk();
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().pending_connections == 1; }));
  auto b = Junk();
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().pending_connections == 2; }));
  EXPECT_EQ(metrics_.kv_connections("handshake").Value(), 2);
  auto c = Junk();
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(ClosedByPeer(*a));  // the oldest
  EXPECT_TRUE(Eventually([&] { return Closed("evicted_pending") == 1; }));
  EXPECT_EQ(receiver_->stats().refused_connections, 0);
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().pending_connections == 2; }));
  // The sender's connection takes b's slot and its transfer completes; c still waits.
  EXPECT_TRUE(Transfer(1).ok());
  EXPECT_TRUE(ClosedByPeer(*b));
  EXPECT_EQ(Closed("evicted_pending"), 2);
  EXPECT_EQ(metrics_.kv_connections("open").Value(), 1);
  EXPECT_EQ(metrics_.kv_connections("handshake").Value(), 1);
  EXPECT_EQ(Closed("over_pending_limit"), 0);
}

TEST_F(TransceiverBoundsTest, OverTheConnectionCapAConnectionIsClosedAtOnce) {
  TransceiverOptions o;
  o.max_connections = 2;
  o.handshake_timeout = kLong;
  Start(o);
  ASSERT_TRUE(Transfer(1).ok());  // the sender's connection: one of the two
  auto a = Junk();
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().inbound_connections == 2; }));
  auto b = Junk();
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(ClosedByPeer(*b));
  EXPECT_EQ(Closed("over_limit"), 1);
  // The sender's connection still carries transfers.
  EXPECT_TRUE(Transfer(2).ok());
}

TEST_F(TransceiverBoundsTest, TransfersWorkWhileJunkConnectionsAreOpen) {
  TransceiverOptions o;
  o.max_pending_connections = 4;
  o.handshake_timeout = kLong;
  Start(o);
  std::vector<std::unique_ptr<Connection>> junk;
  for (int i = 0; i < 3; ++i) junk.push_back(Junk());
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().pending_connections == 3; }));
  for (uint64_t id = 1; id <= 3; ++id) EXPECT_TRUE(Transfer(id).ok()) << id;
  EXPECT_EQ(receiver_->stats().pending_connections, 3);  // the sender's is through
  EXPECT_EQ(receiver_->stats().inbound_connections, 4);
}

TEST_F(TransceiverBoundsTest, AnIdleConnectionIsClosedAndTheSenderReconnects) {
  TransceiverOptions o;
  o.idle_timeout = 100ms;
  Start(o);
  ASSERT_TRUE(Transfer(1).ok());
  EXPECT_TRUE(Eventually([&] { return receiver_->stats().timed_out_connections == 1; }));
  EXPECT_EQ(Closed("idle_timeout"), 1);
  EXPECT_TRUE(Eventually([&] { return sender_->stats().outbound_connections == 0; }));
  EXPECT_TRUE(Transfer(2).ok());
}

TEST_F(TransceiverBoundsTest, AConnectionWithATransferInProgressIsNotIdle) {
  TransceiverOptions o;
  o.idle_timeout = 50ms;
  Start(o);
  HostPageBuffer src(layout_, 2), dst(layout_, 2);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(1, dst, {0}, In(kLong), done.Callback()).ok());
  TransferTicket t;
  t.request_id = 1;
  t.dest_endpoint = receiver_->endpoint();
  t.dest_blocks = {0};
  t.dest_fingerprint = receiver_->fingerprint();
  t.deadline = In(kLong);
  auto h = sender_->StartSend(t, src, {1});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());
  // Several idle timeouts pass with the transfer in progress (a sender still computing).
  std::this_thread::sleep_for(8 * o.idle_timeout);
  for (int32_t l = 1; l < layout_.num_layers; ++l) ASSERT_TRUE(sender_->SendLayer(*h, l).ok());
  EXPECT_TRUE(sender_->Wait(*h).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->ok()) << got->ToString();
}

}  // namespace
}  // namespace tandem
