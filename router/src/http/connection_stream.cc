#include "connection_stream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace tandem::http {
namespace {

constexpr size_t kReadChunk = 16 * 1024;

// Waits for `events` on `fd`: the revents, 0 on timeout.
short WaitFor(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, static_cast<short>(events | POLLRDHUP), 0};
  for (;;) {
    const int n = poll(&p, 1, static_cast<int>(timeout.count()));
    if (n > 0) return p.revents;
    if (n == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

void IpAndPort(const sockaddr_storage& a, std::string& ip, int& port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, buf, sizeof(buf));
    port = ntohs(in.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &in6.sin6_addr, buf, sizeof(buf));
    port = ntohs(in6.sin6_port);
  }
  ip = buf;
}

}  // namespace

ConnectionStream::ConnectionStream(int fd, std::string buffered,
                                   std::chrono::milliseconds read_timeout,
                                   std::chrono::milliseconds write_timeout)
    : fd_(fd),
      buf_(std::move(buffered)),
      read_timeout_(read_timeout),
      write_timeout_(write_timeout) {}

bool ConnectionStream::is_readable() const {
  if (pos_ < buf_.size()) return true;
  return (WaitFor(fd_, POLLIN, read_timeout_) & (POLLIN | POLLRDHUP | POLLHUP)) != 0;
}

bool ConnectionStream::is_writable() const {
  const short r = WaitFor(fd_, POLLOUT, write_timeout_);
  return (r & POLLOUT) != 0 && (r & (POLLRDHUP | POLLHUP | POLLERR)) == 0;
}

ssize_t ConnectionStream::read(char* ptr, size_t size) {
  if (pos_ >= buf_.size()) {
    buf_.clear();
    pos_ = 0;
    for (;;) {
      buf_.resize(kReadChunk);
      const ssize_t n = recv(fd_, buf_.data(), buf_.size(), 0);
      if (n >= 0) {
        buf_.resize(static_cast<size_t>(n));
        if (n == 0) return 0;
        break;
      }
      buf_.clear();
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
      if ((WaitFor(fd_, POLLIN, read_timeout_) & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) == 0) {
        return -1;  // timed out
      }
    }
  }
  const size_t n = std::min(size, buf_.size() - pos_);
  std::memcpy(ptr, buf_.data() + pos_, n);
  pos_ += n;
  return static_cast<ssize_t>(n);
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
  for (;;) {
    const ssize_t n = send(fd_, ptr, size, MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    const short r = WaitFor(fd_, POLLOUT, write_timeout_);
    if ((r & POLLOUT) == 0 || (r & (POLLHUP | POLLERR)) != 0) return -1;
  }
}

void ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t n = sizeof(a);
  if (getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &n) == 0) IpAndPort(a, ip, port);
}

void ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage a{};
  socklen_t n = sizeof(a);
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &n) == 0) IpAndPort(a, ip, port);
}

std::string ConnectionStream::TakeBuffered() {
  std::string rest = buf_.substr(std::min(pos_, buf_.size()));
  buf_.clear();
  pos_ = 0;
  return rest;
}

}  // namespace tandem::http
