// Unix-domain stream sockets for Connection / Listener (stream_socket.cc does the framing):
// same-host peers, which may pass descriptors (the shm transport's page pool).
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "stream_socket.h"

namespace tandem {
namespace {

// "@name" is Linux's abstract namespace: sun_path starts with a NUL byte.
StatusOr<socklen_t> MakeAddress(const std::string& path, sockaddr_un* addr) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) {
    return InvalidArgumentError("unix socket path '{}' is empty or longer than {} bytes", path,
                                sizeof(addr->sun_path) - 1);
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  if (path[0] == '@') addr->sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                (path[0] == '@' ? 0 : 1));
}

}  // namespace

StatusOr<std::unique_ptr<Listener>> ListenUnix(const std::string& path) {
  sockaddr_un addr;
  TANDEM_ASSIGN_OR_RETURN(socklen_t len, MakeAddress(path, &addr));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return UnavailableError("unix socket {}: {}", path, ErrnoText(errno));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 || ::listen(fd, 128) != 0) {
    const int err = errno;
    ::close(fd);
    return UnavailableError("cannot listen on unix socket {}: {}", path, ErrnoText(err));
  }
  return MakeStreamListener(fd, 0, path[0] == '@' ? "" : path,
                            [path](int conn_fd, const sockaddr_storage&) {
                              return MakeStreamConnection(conn_fd, path, /*unix_socket=*/true);
                            });
}

StatusOr<std::unique_ptr<Connection>> ConnectUnix(const std::string& path, Deadline deadline) {
  sockaddr_un addr;
  TANDEM_ASSIGN_OR_RETURN(socklen_t len, MakeAddress(path, &addr));
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return UnavailableError("unix socket {}: {}", path, ErrnoText(errno));
  int err = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), len) == 0 ? 0 : errno;
  if (err == EINPROGRESS || err == EAGAIN) {
    std::atomic<bool> never{false};
    Status s = WaitFd(fd, POLLOUT, deadline, never, fmt::format("connect to {}", path));
    if (!s.ok()) {
      ::close(fd);
      return s;
    }
    socklen_t elen = sizeof(err);
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
  }
  if (err != 0) {
    ::close(fd);
    return UnavailableError("connect to unix socket {}: {}", path, ErrnoText(err));
  }
  return MakeStreamConnection(fd, path, /*unix_socket=*/true);
}

}  // namespace tandem
