#include "connection_stream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <openssl/err.h>

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

ConnectionStream::ConnectionStream(int fd, SSL* ssl, std::string buffered,
                                   std::chrono::milliseconds read_timeout,
                                   std::chrono::milliseconds write_timeout)
    : fd_(fd),
      ssl_(ssl),
      buf_(std::move(buffered)),
      read_timeout_(read_timeout),
      write_timeout_(write_timeout) {}

bool ConnectionStream::is_readable() const {
  if (pos_ < buf_.size()) return true;
  if (ssl_ != nullptr && SSL_pending(ssl_) > 0) return true;
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
    if (ssl_ != nullptr) {
      buf_.resize(kReadChunk);  // a whole TLS record: nothing stays inside SSL between requests
      const ssize_t n = SslIo(/*write=*/false, buf_.data(), buf_.size());
      buf_.resize(static_cast<size_t>(std::max<ssize_t>(n, 0)));
      if (n <= 0) return n;
    }
    while (ssl_ == nullptr) {
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
  if (ssl_ != nullptr) return SslIo(/*write=*/true, const_cast<char*>(ptr), size);
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

ssize_t ConnectionStream::SslIo(bool write, char* ptr, size_t size) {
  if (size == 0) return 0;
  const int len = static_cast<int>(std::min<size_t>(size, 1 << 30));
  for (;;) {
    ERR_clear_error();
    const int n = write ? SSL_write(ssl_, ptr, len) : SSL_read(ssl_, ptr, len);
    if (n > 0) return n;
    const int err = SSL_get_error(ssl_, n);
    short want = 0;
    if (err == SSL_ERROR_WANT_READ) {
      want = POLLIN;
    } else if (err == SSL_ERROR_WANT_WRITE) {
      want = POLLOUT;
    } else if (err == SSL_ERROR_SYSCALL && errno == EINTR) {
      continue;
    } else {
      ERR_clear_error();
      return err == SSL_ERROR_ZERO_RETURN ? 0 : -1;  // close_notify: end of stream
    }
    const short r = WaitFor(fd_, want, want == POLLIN ? read_timeout_ : write_timeout_);
    if ((r & (want | POLLRDHUP | POLLHUP | POLLERR)) == 0) return -1;  // timed out
  }
}

std::string ConnectionStream::TakeBuffered() {
  std::string rest = buf_.substr(std::min(pos_, buf_.size()));
  buf_.clear();
  pos_ = 0;
  return rest;
}

}  // namespace tandem::http
