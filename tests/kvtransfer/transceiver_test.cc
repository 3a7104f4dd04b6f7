#include "tandem/kvtransfer/transceiver.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <thread>

#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::Eventually;
using testing_kv::In;
using testing_kv::kGuard;
using testing_kv::kLong;
using testing_kv::SmallLayout;

std::unique_ptr<Transceiver> Make(const KvPageLayout& layout, bool listen = true) {
  TransceiverOptions o;
  o.layout = layout;
  o.listen = listen;
  auto t = Transceiver::Create(o);
  EXPECT_TRUE(t.ok()) << t.status().ToString();
  return std::move(t).value();
}

TransferTicket Ticket(const Transceiver& receiver, uint64_t id, std::vector<int32_t> blocks,
                      std::chrono::milliseconds timeout = kLong) {
  TransferTicket t;
  t.request_id = id;
  t.dest_endpoint = receiver.endpoint();
  t.dest_blocks = std::move(blocks);
  t.dest_fingerprint = receiver.fingerprint();
  t.deadline = In(timeout);
  return t;
}

class TransceiverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_ = SmallLayout();
    receiver_ = Make(layout_);
    sender_ = Make(layout_, /*listen=*/false);
  }
  void ExpectIdle() {
    EXPECT_TRUE(Eventually([&] {
      return sender_->stats().active_sends == 0 && receiver_->stats().active_receives == 0;
    }));
  }
  // One whole transfer (one block, every layer) from sender_ to receiver_ under request id
  // `id`; returns how long it took on this machine right now. It also opens the connection that
  // later requests reuse, so their start frames go out at once.
  std::chrono::milliseconds MeasureRound(uint64_t id) {
    HostPageBuffer src(layout_, 4), dst(layout_, 4);
    DoneLatch done;
    const auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(receiver_->ExpectTransfer(id, dst, {0}, In(kLong), done.Callback()).ok());
    auto h = sender_->StartSend(Ticket(*receiver_, id, {0}), src, {1});
    EXPECT_TRUE(h.ok()) << h.status().ToString();
    if (!h.ok()) return kGuard;
    for (int32_t l = 0; l < layout_.num_layers; ++l) EXPECT_TRUE(sender_->SendLayer(*h, l).ok());
    EXPECT_TRUE(sender_->Wait(*h).ok());
    auto got = done.Get();
    EXPECT_TRUE(got.has_value() && got->ok());
    return std::max<std::chrono::milliseconds>(
        1ms, std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - start));
  }
  KvPageLayout layout_;
  std::unique_ptr<Transceiver> receiver_;
  std::unique_ptr<Transceiver> sender_;
};

TEST_F(TransceiverTest, OneRequestArrivesExactlyInTheReservedBlocks) {
  std::mt19937_64 rng(1);
  HostPageBuffer src(layout_, 32), dst(layout_, 32);
  testing_kv::FillRandom(src, 11);
  auto src_blocks = testing_kv::RandomBlocks(9, 32, rng);
  auto dst_blocks = testing_kv::RandomBlocks(9, 32, rng);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(1, dst, dst_blocks, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 1, dst_blocks), src, src_blocks);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  for (int32_t layer : {2, 0, 3, 1}) ASSERT_TRUE(sender_->SendLayer(*h, layer).ok());
  EXPECT_EQ(sender_->SendLayer(*h, 0).code(), StatusCode::kInvalidArgument);  // repeated
  Status sent = sender_->Wait(*h);
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->ok()) << got->ToString();
  testing_kv::ExpectSamePages(src, src_blocks, dst, dst_blocks, layout_.num_layers);
  EXPECT_EQ(receiver_->stats().bytes_received,
            int64_t(layout_.num_layers) * 9 * int64_t(layout_.PageBytes()));
  ExpectIdle();
  EXPECT_EQ(sender_->SendLayer(*h, 1).code(), StatusCode::kFailedPrecondition);
}

TEST_F(TransceiverTest, SixtyFourConcurrentRequestsShareOneConnection) {
  constexpr int kRequests = 64, kBlocks = 3;
  std::mt19937_64 rng(2);
  HostPageBuffer src(layout_, kRequests * kBlocks), dst(layout_, kRequests * kBlocks + 7);
  testing_kv::FillRandom(src, 22);
  auto src_pool = testing_kv::RandomBlocks(kRequests * kBlocks, kRequests * kBlocks, rng);
  auto dst_pool = testing_kv::RandomBlocks(kRequests * kBlocks, kRequests * kBlocks + 7, rng);
  std::vector<std::vector<int32_t>> src_blocks(kRequests), dst_blocks(kRequests);
  std::vector<DoneLatch> done(kRequests);
  std::vector<SendHandle> handles(kRequests);
  for (int r = 0; r < kRequests; ++r) {
    src_blocks[r].assign(src_pool.begin() + r * kBlocks, src_pool.begin() + (r + 1) * kBlocks);
    dst_blocks[r].assign(dst_pool.begin() + r * kBlocks, dst_pool.begin() + (r + 1) * kBlocks);
    ASSERT_TRUE(
        receiver_->ExpectTransfer(100 + r, dst, dst_blocks[r], In(kLong), done[r].Callback()).ok());
    auto h = sender_->StartSend(Ticket(*receiver_, 100 + r, dst_blocks[r]), src, src_blocks[r]);
    ASSERT_TRUE(h.ok());
    handles[r] = *h;
  }
  // Layers interleave across requests, the way a batched prefill produces them.
  for (int32_t layer = 0; layer < layout_.num_layers; ++layer) {
    for (int r = 0; r < kRequests; ++r) ASSERT_TRUE(sender_->SendLayer(handles[r], layer).ok());
  }
  for (int r = 0; r < kRequests; ++r) {
    Status s = sender_->Wait(handles[r]);
    EXPECT_TRUE(s.ok()) << r << ": " << s.ToString();
    auto got = done[r].Get();
    ASSERT_TRUE(got.has_value());
    EXPECT_TRUE(got->ok()) << got->ToString();
    testing_kv::ExpectSamePages(src, src_blocks[r], dst, dst_blocks[r], layout_.num_layers);
  }
  EXPECT_EQ(sender_->stats().outbound_connections, 1);
  EXPECT_EQ(receiver_->stats().inbound_connections, 1);
  EXPECT_EQ(sender_->stats().layers_sent, kRequests * layout_.num_layers);
  ExpectIdle();
}

// WireSeconds counts the time some layer was on its way (sent, not yet acknowledged), not the
// gaps between layers while the sender's compute runs.
TEST_F(TransceiverTest, WireSecondsCountOnlyTimeWithALayerInFlight) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(5, dst, {0, 1}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 5, {0, 1}), src, {2, 3});
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(sender_->WireSeconds(*h), 0.0);  // nothing sent yet
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());
  ASSERT_TRUE(Eventually([&] { return sender_->stats().layers_sent == 1; }));  // acknowledged
  const double one = sender_->WireSeconds(*h);
  EXPECT_GT(one, 0.0);
  // No layer in flight: however long the next layer's compute takes, nothing is added.
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(sender_->WireSeconds(*h), one);
  for (int32_t l = 1; l < layout_.num_layers; ++l) ASSERT_TRUE(sender_->SendLayer(*h, l).ok());
  ASSERT_TRUE(sender_->Wait(*h).ok());
  const double all = sender_->WireSeconds(*h);
  EXPECT_GT(all, one);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value() && got->ok());
  EXPECT_EQ(sender_->WireSeconds(*h), all);  // final once it ended
}

TEST_F(TransceiverTest, LayoutMismatchRefusedBeforeAnyPageByte) {
  KvPageLayout other = layout_;
  other.page_size = 8;  // sender pages are twice as big
  auto sender = Make(other, /*listen=*/false);
  HostPageBuffer src(other, 8), dst(layout_, 8);
  testing_kv::FillRandom(src, 3);
  std::vector<int32_t> blocks = {1, 2, 5};
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(7, dst, blocks, In(kLong), done.Callback()).ok());
  auto h = sender->StartSend(Ticket(*receiver_, 7, blocks), src, blocks);
  ASSERT_TRUE(h.ok());
  for (int32_t layer = 0; layer < other.num_layers; ++layer) {
    Status s = sender->SendLayer(*h, layer);  // held until accepted, i.e. never
    if (!s.ok()) {
      EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
    }
  }
  Status sent = sender->Wait(*h);
  EXPECT_EQ(sent.code(), StatusCode::kFailedPrecondition) << sent.ToString();
  EXPECT_NE(sent.message().find("page_size differs: local 4, remote 8"), std::string::npos)
      << sent.message();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kFailedPrecondition) << got->ToString();
  EXPECT_TRUE(testing_kv::AllZero(dst.bytes()));
  EXPECT_EQ(receiver_->stats().bytes_received, 0);
  EXPECT_EQ(receiver_->stats().active_receives, 0);
}

TEST_F(TransceiverTest, StaleTicketFingerprintRefused) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  std::vector<int32_t> blocks = {0, 1};
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(8, dst, blocks, In(kLong), done.Callback()).ok());
  TransferTicket t = Ticket(*receiver_, 8, blocks);
  t.dest_fingerprint ^= 0xff;
  auto h = sender_->StartSend(t, src, blocks);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kFailedPrecondition);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kFailedPrecondition);
}

TEST_F(TransceiverTest, ReceiverDeadlineWhenSenderNeverSends) {
  HostPageBuffer dst(layout_, 4);
  DoneLatch done;
  auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(receiver_->ExpectTransfer(9, dst, {0, 1}, In(200ms), done.Callback()).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kDeadlineExceeded) << got->ToString();
  EXPECT_GE(done.at() - start, 200ms) << "ended before its deadline";
  EXPECT_EQ(receiver_->stats().active_receives, 0);
}

TEST_F(TransceiverTest, SenderDeadlineWithMissingLayersEndsBothSides) {
  // The sender's deadline is short, yet long enough here for its start and first layer to
  // reach the receiver: ten times one whole transfer measured first, and at least 300 ms.
  const auto deadline = std::max<std::chrono::milliseconds>(300ms, 10 * MeasureRound(1010));
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(10, dst, {2, 3}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 10, {2, 3}, deadline), src, {0, 1});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());  // layers 1..3 are never computed
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kDeadlineExceeded);
  auto got = done.Get();  // told by the sender's abort, long before its own (kLong) deadline
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kDeadlineExceeded) << got->ToString();
  ExpectIdle();
}

TEST_F(TransceiverTest, ReceiverCancelMidTransfer) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(11, dst, {0, 1}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 11, {0, 1}), src, {2, 3});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().layers_received >= 1; }));
  ASSERT_TRUE(receiver_->Cancel(11).ok());
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled);
  // Told by the receiver; its own (kLong) deadline would say DEADLINE_EXCEEDED.
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kCancelled);
  EXPECT_EQ(receiver_->Cancel(11).code(), StatusCode::kNotFound);
  EXPECT_FALSE(sender_->SendLayer(*h, 1).ok());
  ExpectIdle();
}

TEST_F(TransceiverTest, SenderCancelMidTransfer) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(12, dst, {0}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 12, {0}), src, {3});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 0).ok());
  ASSERT_TRUE(sender_->SendLayer(*h, 1).ok());
  ASSERT_TRUE(Eventually([&] { return receiver_->stats().layers_received >= 2; }));
  ASSERT_TRUE(sender_->Cancel(12).ok());
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kCancelled);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled) << got->ToString();
  ExpectIdle();
}

// The sender's completion callback (no thread blocked in Wait): it runs exactly once with what
// Wait returns, both for an acknowledged transfer and for a cancelled one.
TEST_F(TransceiverTest, SendCompletionCallbackRunsOnceWithTheFinalStatus) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch recv_ok, send_ok;
  ASSERT_TRUE(receiver_->ExpectTransfer(21, dst, {1}, In(kLong), recv_ok.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 21, {1}), src, {2}, send_ok.Callback());
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  for (int32_t l = 0; l < layout_.num_layers; ++l) ASSERT_TRUE(sender_->SendLayer(*h, l).ok());
  auto sent = send_ok.Get();
  ASSERT_TRUE(sent.has_value());
  EXPECT_TRUE(sent->ok()) << sent->ToString();
  EXPECT_TRUE(sender_->Wait(*h).ok());
  ASSERT_TRUE(recv_ok.Get().has_value());

  DoneLatch recv_cut, send_cut;
  ASSERT_TRUE(receiver_->ExpectTransfer(22, dst, {0}, In(kLong), recv_cut.Callback()).ok());
  auto h2 = sender_->StartSend(Ticket(*receiver_, 22, {0}), src, {3}, send_cut.Callback());
  ASSERT_TRUE(h2.ok());
  ASSERT_TRUE(sender_->SendLayer(*h2, 0).ok());
  ASSERT_TRUE(sender_->Cancel(22).ok());
  auto cut = send_cut.Get();
  ASSERT_TRUE(cut.has_value());
  EXPECT_EQ(cut->code(), StatusCode::kCancelled) << cut->ToString();
  EXPECT_EQ(sender_->Wait(*h2).code(), StatusCode::kCancelled);
  ASSERT_TRUE(recv_cut.Get().has_value());
  ExpectIdle();
}

TEST_F(TransceiverTest, SenderCancelBeforeAnyLayerReachesReceiver) {
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(18, dst, {1}, In(kLong), done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 18, {1}), src, {2});
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender_->Cancel(18).ok());  // the kStart may or may not have gone out yet
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kCancelled);
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled) << got->ToString();
  EXPECT_TRUE(testing_kv::AllZero(dst.bytes()));
  ExpectIdle();
}

// The KV handshake authenticates the sender by the request's token (which only the ticket
// carries): a stranger who guesses the request id can neither start it (UNAUTHENTICATED) nor
// end it with an abort before the real sender starts; the registration is untouched and the
// sender holding the token completes it.
TEST_F(TransceiverTest, AStrangerWithoutTheTokenCanNeitherFeedNorEndARequest) {
  HostPageBuffer src(layout_, 4), junk(layout_, 4), dst(layout_, 4);
  testing_kv::FillRandom(src, 5);
  testing_kv::FillRandom(junk, 6);
  const uint64_t token = NewTransferToken();
  EXPECT_NE(token, 0u);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(21, dst, {1}, In(kLong), done.Callback(), token).ok());
  TransferTicket wrong = Ticket(*receiver_, 21, {1});
  wrong.token = token ^ 1;
  {
    auto stranger = Make(layout_, /*listen=*/false);
    auto h = stranger->StartSend(wrong, junk, {2});
    ASSERT_TRUE(h.ok());
    for (int32_t l = 0; l < layout_.num_layers; ++l) (void)stranger->SendLayer(*h, l);
    Status s = stranger->Wait(*h);
    EXPECT_EQ(s.code(), StatusCode::kUnauthenticated) << s.ToString();
  }
  {
    auto stranger = Make(layout_, /*listen=*/false);
    wrong.token = 0;  // no token at all, and cancelled at once: its kAbort carries none either
    auto h = stranger->StartSend(wrong, junk, {2});
    ASSERT_TRUE(h.ok());
    (void)stranger->Cancel(21);
    const StatusCode code = stranger->Wait(*h).code();
    EXPECT_TRUE(code == StatusCode::kCancelled || code == StatusCode::kUnauthenticated)
        << StatusCodeName(code);
  }
  EXPECT_TRUE(testing_kv::AllZero(dst.bytes()));
  TransferTicket right = Ticket(*receiver_, 21, {1});
  right.token = token;
  auto h = sender_->StartSend(right, src, {2});
  ASSERT_TRUE(h.ok());
  for (int32_t l = 0; l < layout_.num_layers; ++l) ASSERT_TRUE(sender_->SendLayer(*h, l).ok());
  Status sent = sender_->Wait(*h);
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->ok()) << got->ToString();
  testing_kv::ExpectSamePages(src, {2}, dst, {1}, layout_.num_layers);
  ExpectIdle();
}

// The receiver's deadline is a start-by deadline: a sender that started in time (here before
// it had its pages) keeps the transfer alive past it, and completes it.
TEST_F(TransceiverTest, SenderStartedBeforeTheStartByDeadlineMayFinishAfterIt) {
  // The start-by deadline is short, yet long enough here for the start to arrive in time: ten
  // times one whole transfer measured first, and at least 200 ms.
  const auto start_by = std::max<std::chrono::milliseconds>(200ms, 10 * MeasureRound(1020));
  HostPageBuffer src(layout_, 4), dst(layout_, 4);
  testing_kv::FillRandom(src, 3);
  DoneLatch done;
  const Deadline registered_until = In(start_by);
  ASSERT_TRUE(receiver_->ExpectTransfer(20, dst, {1, 2}, registered_until, done.Callback()).ok());
  auto h = sender_->StartSend(Ticket(*receiver_, 20, {1, 2}), src, {});
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(sender_->SendLayer(*h, 0).code(), StatusCode::kFailedPrecondition);  // no blocks yet
  EXPECT_EQ(sender_->BindBlocks(*h, {0}).code(), StatusCode::kInvalidArgument);  // wrong count
  // Well past the start-by deadline (nothing to wait for: the point is that nothing happens).
  std::this_thread::sleep_until(registered_until +
                                std::max<std::chrono::milliseconds>(300ms, start_by));
  EXPECT_FALSE(done.Get(0ms).has_value());
  ASSERT_TRUE(sender_->BindBlocks(*h, {3, 0}).ok());
  EXPECT_EQ(sender_->BindBlocks(*h, {3, 0}).code(), StatusCode::kFailedPrecondition);  // twice
  for (int32_t l = 0; l < layout_.num_layers; ++l) ASSERT_TRUE(sender_->SendLayer(*h, l).ok());
  Status sent = sender_->Wait(*h);
  EXPECT_TRUE(sent.ok()) << sent.ToString();
  auto got = done.Get();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->ok()) << got->ToString();
  testing_kv::ExpectSamePages(src, {3, 0}, dst, {1, 2}, layout_.num_layers);
  ExpectIdle();
}

TEST_F(TransceiverTest, UnknownRequestAndUnreachableReceiver) {
  HostPageBuffer src(layout_, 4);
  auto h = sender_->StartSend(Ticket(*receiver_, 13, {0}), src, {0});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kNotFound);

  TransferTicket t = Ticket(*receiver_, 14, {0});
  t.dest_endpoint = "127.0.0.1:1";  // nothing listens there
  h = sender_->StartSend(t, src, {0});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(sender_->Wait(*h).code(), StatusCode::kUnavailable);

  t.dest_endpoint = "nonsense";
  EXPECT_EQ(sender_->StartSend(t, src, {0}).status().code(), StatusCode::kInvalidArgument);
  t = Ticket(*receiver_, 15, {0, 1});
  EXPECT_EQ(sender_->StartSend(t, src, {0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sender_->StartSend(Ticket(*receiver_, 16, {0}), src, {99}).status().code(),
            StatusCode::kInvalidArgument);
  HostPageBuffer dst(layout_, 4);
  DoneLatch done;
  ASSERT_TRUE(receiver_->ExpectTransfer(17, dst, {0}, In(kLong), done.Callback()).ok());
  EXPECT_EQ(receiver_->ExpectTransfer(17, dst, {1}, In(kLong), nullptr).code(),
            StatusCode::kAlreadyExists);
  ASSERT_TRUE(receiver_->Cancel(17).ok());
  auto got = done.Get();  // the callback runs on the service thread: wait before `done` goes
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), StatusCode::kCancelled);
  ExpectIdle();
}

TEST(TransceiverLifetimeTest, DestructorEndsActiveRequestsAndLeaksNothing) {
  const int fds = testing_kv::CountFds(), threads = testing_kv::CountThreads();
  KvPageLayout layout = SmallLayout();
  HostPageBuffer src(layout, 8), dst(layout, 8);
  testing_kv::FillRandom(src, 5);
  DoneLatch finished, pending;
  {
    auto receiver = Make(layout);
    auto sender = Make(layout, /*listen=*/false);
    ASSERT_TRUE(receiver->ExpectTransfer(1, dst, {4, 5}, In(kLong), finished.Callback()).ok());
    auto h = sender->StartSend(Ticket(*receiver, 1, {4, 5}), src, {0, 1});
    ASSERT_TRUE(h.ok());
    for (int32_t l = 0; l < layout.num_layers; ++l) ASSERT_TRUE(sender->SendLayer(*h, l).ok());
    ASSERT_TRUE(sender->Wait(*h).ok());
    ASSERT_TRUE(receiver->ExpectTransfer(2, dst, {6}, In(kLong), pending.Callback()).ok());
    auto h2 = sender->StartSend(Ticket(*receiver, 2, {6}), src, {2});
    ASSERT_TRUE(h2.ok());
    ASSERT_TRUE(sender->SendLayer(*h2, 0).ok());
    EXPECT_GT(testing_kv::CountThreads(), threads);
    // Both destroyed with request 2 in flight.
  }
  auto p = pending.Get();
  ASSERT_TRUE(p.has_value());
  EXPECT_FALSE(p->ok());
  EXPECT_EQ(finished.calls(), 1);
  EXPECT_EQ(pending.calls(), 1);
  EXPECT_EQ(testing_kv::CountFds(), fds);
  EXPECT_EQ(testing_kv::CountThreads(), threads);
}

}  // namespace
}  // namespace tandem
