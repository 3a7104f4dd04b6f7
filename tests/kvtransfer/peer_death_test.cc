// A peer process dies mid-transfer (SIGKILL): the survivor's requests end with UNAVAILABLE
// (never by their deadlines, which are far later) and their resources are released exactly once.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"

namespace tandem {
namespace {

using namespace std::chrono_literals;
using testing_kv::DoneLatch;
using testing_kv::Eventually;

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

// Child side of the port hand-off; returns -1 on timeout.
int ReadInt(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return -1;
  int v = -1;
  return ::read(fd, &v, sizeof(v)) == sizeof(v) ? v : -1;
}

// Runs `child` in a forked process (which never returns; SIGALRM ends it if the parent dies).
// Returns the child pid and a pipe: parent writes to .second[1] / reads .second[0] as needed.
struct Child {
  pid_t pid = -1;
  int to_child = -1;    // parent writes
  int from_child = -1;  // parent reads
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (to_child >= 0) ::close(to_child);
    if (from_child >= 0) ::close(from_child);
  }
};

template <typename Fn>
void Spawn(Child* c, Fn child_main) {
  // Forking is safest with one thread: earlier tests joined all of theirs (sanitizers may keep
  // a background thread of their own, so this is a note, not a failure).
  if (testing_kv::CountThreads() != 1) {
    std::fprintf(stderr, "note: forking with %d threads\n", testing_kv::CountThreads());
  }
  int down[2], up[2];
  ASSERT_EQ(::pipe2(down, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(up, O_CLOEXEC), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::alarm(600);  // if the parent dies without killing it
    ::close(down[1]);
    ::close(up[0]);
    child_main(down[0], up[1]);
    while (true) ::pause();
  }
  ::close(down[0]);
  ::close(up[1]);
  c->pid = pid;
  c->to_child = down[1];
  c->from_child = up[0];
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
