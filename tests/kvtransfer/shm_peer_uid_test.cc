// The shm listener hands its page pool's descriptor (every request's KV, read and write) only to
// a process of the worker's own user: a process of another user that connects to the abstract
// Unix socket gets the connection closed and no descriptor. Needs root (to connect as another
// user); skipped otherwise.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "tandem/common/metrics.h"
#include "tandem/kvtransfer/shared_pages.h"
#include "tandem/kvtransfer/transceiver.h"
#include "test_util.h"

namespace tandem {
namespace {

constexpr uid_t kNobody = 65534;

// Connects to `socket_name` ("@abstract" or a path) and reads the first message: the number of
// descriptors that came with it (0 when the receiver closed the connection instead), or -1 on a
// failed connect. Only system calls: it also runs in a forked child of this threaded process.
int DescriptorsOnConnect(const char* socket_name) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t n = std::strlen(socket_name);
  if (n >= sizeof(addr.sun_path)) return -1;
  std::memcpy(addr.sun_path, socket_name, n);
  if (socket_name[0] == '@') addr.sun_path[0] = '\0';
  const socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    ::close(fd);
    return -1;
  }
  char data[4096];
  alignas(cmsghdr) char control[CMSG_SPACE(8 * sizeof(int))];
  iovec iov{data, sizeof(data)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  int fds = 0;
  if (::recvmsg(fd, &msg, 0) > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const int k = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < k; ++i) {
        int got;
        std::memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        ::close(got);
      }
      fds += k;
    }
  }
  ::close(fd);
  return fds;
}

TEST(ShmPeerUidTest, OnlyAProcessOfTheSameUserGetsThePagePool) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another user";
  const KvPageLayout layout = testing_kv::SmallLayout();
  auto pages = SharedPageBuffer::Create(layout, 8);
  ASSERT_TRUE(pages.ok()) << pages.status().ToString();
  Metrics metrics(MetricRole::kDecode, "m");
  TransceiverOptions o;
  o.layout = layout;
  o.shm_pool = (*pages)->pool();
  o.metrics = &metrics;
  auto t = Transceiver::Create(o);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const std::string endpoint = (*t)->shm_endpoint();
  ASSERT_EQ(endpoint.rfind("shm:", 0), 0u) << endpoint;
  const std::string socket_name = endpoint.substr(4);

  // Another user: closed, no descriptor.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) ::_exit(100);
    const int fds = DescriptorsOnConnect(socket_name.c_str());
    ::_exit(fds < 0 ? 101 : fds);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0)
      << "descriptors handed to uid " << kNobody << " (100: setuid failed, 101: connect failed)";
  EXPECT_TRUE(testing_kv::Eventually(
      [&] { return metrics.kv_connections_closed("peer_uid").Value() == 1; }));

  // The same user: the pool and the lease, as every shm sender gets them.
  EXPECT_EQ(DescriptorsOnConnect(socket_name.c_str()), 2);
  EXPECT_EQ(metrics.kv_connections_closed("peer_uid").Value(), 1);
}

}  // namespace
}  // namespace tandem
