// A peer process dies mid-transfer (SIGKILL): the survivor's requests end with UNAVAILABLE
// (never by their deadlines, which are far later) and their resources are released exactly once.
#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "child_process.h"
#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::Eventually;
using testing_kv::ReadInt;
using testing_kv::Spawn;
using Child = testing_kv::Child;

constexpr uint64_t kRequest = 77;
const std::vector<int32_t> kSrcBlocks = {5, 0, 3};
const std::vector<int32_t> kDstBlocks = {1, 6, 2};
// The transfers' deadlines: past the hang guard of every wait here, so what ends a transfer
// within a wait is the peer's death (UNAVAILABLE), not a deadline (DEADLINE_EXCEEDED).
constexpr std::chrono::milliseconds kDeadline = 2 * testing_kv::kGuard;

Deadline In(std::chrono::milliseconds d) { return std::chrono::steady_clock::now() + d; }

std::unique_ptr<Transceiver> Make(bool listen) {
  TransceiverOptions o;
  o.layout = testing_kv::SmallLayout();
  o.listen = listen;
  auto t = Transceiver::Create(o);
  if (!t.ok()) return nullptr;
  return std::move(t).value();
}

TEST(PeerDeathTest, SenderKilledMidTransferReceiverReportsUnavailable) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  Child child;
  Spawn(&child, [&](int in, int out) {
    int port = ReadInt(in, static_cast<int>(testing_kv::kGuard.count()));
    auto sender = Make(/*listen=*/false);
    if (port < 0 || !sender) ::_exit(2);
    static HostPageBuffer src(layout, 8);
    testing_kv::FillRandom(src, 99);
    TransferTicket t{kRequest, fmt::format("127.0.0.1:{}", port), kDstBlocks, layout.Fingerprint(),
                     In(kDeadline)};
    auto h = sender->StartSend(t, src, kSrcBlocks);
    if (!h.ok()) ::_exit(3);
    (void)sender->SendLayer(*h, 0);
    (void)sender->SendLayer(*h, 1);
    while (true) ::pause();  // layers 2 and 3 never come: killed here
  });
  auto receiver = Make(/*listen=*/true);
  ASSERT_NE(receiver, nullptr);
  HostPageBuffer dst(layout, 8);
  DoneLatch done;
  ASSERT_TRUE(
      receiver->ExpectTransfer(kRequest, dst, kDstBlocks, In(kDeadline), done.Callback()).ok());
  int port = std::stoi(receiver->endpoint().substr(receiver->endpoint().rfind(':') + 1));
  ASSERT_EQ(::write(child.to_child, &port, sizeof(port)), ssize_t(sizeof(port)));
  ASSERT_TRUE(Eventually([&] { return receiver->stats().layers_received >= 2; }));

  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  auto got = done.Get();  // long before the request's deadline
  ASSERT_TRUE(got.has_value()) << "no completion after the sender died";
  EXPECT_EQ(got->code(), StatusCode::kUnavailable) << got->ToString();
  EXPECT_EQ(receiver->stats().active_receives, 0);
  EXPECT_TRUE(Eventually([&] { return receiver->stats().inbound_connections == 0; }));
  EXPECT_EQ(done.calls(), 1);
  // The layers that did arrive are exact.
  HostPageBuffer expect(layout, 8);
  testing_kv::FillRandom(expect, 99);
  testing_kv::ExpectSamePages(expect, kSrcBlocks, dst, kDstBlocks, /*num_layers=*/2);
  // The same request id can be reserved again (registration was released).
  EXPECT_TRUE(receiver->ExpectTransfer(kRequest, dst, kDstBlocks, In(kDeadline), nullptr).ok());
  EXPECT_TRUE(receiver->Cancel(kRequest).ok());
}

TEST(PeerDeathTest, ReceiverKilledMidTransferSenderReportsUnavailable) {
  const KvPageLayout layout = testing_kv::SmallLayout();
  Child child;
  Spawn(&child, [&](int in, int out) {
    auto receiver = Make(/*listen=*/true);
    if (!receiver) ::_exit(2);
    static HostPageBuffer dst(layout, 8);
    if (!receiver->ExpectTransfer(kRequest, dst, kDstBlocks, In(kDeadline), nullptr).ok()) {
      ::_exit(3);
    }
    int port = std::stoi(receiver->endpoint().substr(receiver->endpoint().rfind(':') + 1));
    if (::write(out, &port, sizeof(port)) != sizeof(port)) ::_exit(4);
    while (true) ::pause();
  });
  int port = ReadInt(child.from_child, static_cast<int>(testing_kv::kGuard.count()));
  ASSERT_GT(port, 0);
  auto sender = Make(/*listen=*/false);
  ASSERT_NE(sender, nullptr);
  HostPageBuffer src(layout, 8);
  TransferTicket t{kRequest, fmt::format("127.0.0.1:{}", port), kDstBlocks, layout.Fingerprint(),
                   In(kDeadline)};
  auto h = sender->StartSend(t, src, kSrcBlocks);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(sender->SendLayer(*h, 0).ok());
  ASSERT_TRUE(Eventually([&] { return sender->stats().layers_sent >= 1; }));

  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  Status s = sender->Wait(*h);  // bounded by the ticket's deadline, which would say so
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_EQ(sender->stats().active_sends, 0);
  EXPECT_EQ(sender->stats().outbound_connections, 0);
  EXPECT_EQ(sender->SendLayer(*h, 1).code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tandem
