// Connection / Listener over a connected stream socket (TCP or Unix): non-blocking sockets,
// poll() for deadlines, sendmsg / readv (recvmsg on Unix sockets, which may carry descriptors)
// for scatter-gather. Only the socket setup differs by family (tcp_connection.cc,
// unix_connection.cc).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <vector>

#include "stream_socket.h"

namespace tandem {
namespace {

static_assert(std::endian::native == std::endian::little, "wire format assumes little-endian");
constexpr uint32_t kFrameMagic = 0x31564B54;  // "TKV1"
constexpr size_t kHeaderBytes = 32;
// Poll in slices so that flags set by Close()/Shutdown() are seen even without a wake-up.
constexpr int kPollSliceMs = 100;

int SliceMs(Deadline deadline) {
  if (deadline == kNoDeadline) return kPollSliceMs;
  auto left =
      std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  return static_cast<int>(std::clamp<int64_t>(left.count(), 0, kPollSliceMs));
}

}  // namespace

std::string ErrnoText(int err) { return std::strerror(err); }

namespace {

void EncodeHeader(const MessageHeader& h, std::byte* out) {
  uint16_t flags = 0;
  std::memcpy(out + 0, &kFrameMagic, 4);
  std::memcpy(out + 4, &h.kind, 2);
  std::memcpy(out + 6, &flags, 2);
  std::memcpy(out + 8, &h.request_id, 8);
  std::memcpy(out + 16, &h.layer, 4);
  std::memcpy(out + 20, &h.page_count, 4);
  std::memcpy(out + 24, &h.length, 8);
}

bool DecodeHeader(const std::byte* in, MessageHeader* h) {
  uint32_t magic;
  std::memcpy(&magic, in, 4);
  std::memcpy(&h->kind, in + 4, 2);
  std::memcpy(&h->request_id, in + 8, 8);
  std::memcpy(&h->layer, in + 16, 4);
  std::memcpy(&h->page_count, in + 20, 4);
  std::memcpy(&h->length, in + 24, 8);
  return magic == kFrameMagic;
}

}  // namespace

Status WaitFd(int fd, short events, Deadline deadline, const std::atomic<bool>& stop,
              std::string_view what) {
  while (true) {
    if (stop.load()) return CancelledError("{}: connection shut down locally", what);
    int ms = SliceMs(deadline);
    if (ms == 0 && std::chrono::steady_clock::now() >= deadline) {
      return DeadlineExceededError("{}: deadline exceeded", what);
    }
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, ms);
    if (r < 0 && errno != EINTR) return UnavailableError("{}: poll: {}", what, ErrnoText(errno));
    if (r > 0) return Status::Ok();
  }
}

namespace {

class StreamConnection final : public Connection {
 public:
  StreamConnection(int fd, std::string peer, bool unix_socket, SSL* ssl)
      : fd_(fd), peer_(std::move(peer)), unix_(unix_socket), ssl_(ssl) {
    if (unix_) {
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (::getsockopt(fd_, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
        peer_pid_ = cred.pid;
        peer_uid_ = cred.uid;
      }
    }
  }
  ~StreamConnection() override {
    if (ssl_ != nullptr) SSL_free(ssl_);
    ::close(fd_);
    for (int fd : fds_) ::close(fd);
  }

  Status Send(const MessageHeader& header, std::span<const ConstByteSpan> payload,
              Deadline deadline) override {
    return SendWithFds(header, payload, {}, deadline);
  }

  Status SendWithFds(const MessageHeader& header, std::span<const ConstByteSpan> payload,
                     std::span<const int> fds, Deadline deadline) override {
    if (!fds.empty() && !unix_) {
      return UnimplementedError("send to {}: descriptors only travel over Unix sockets", peer_);
    }
    if (fds.size() > kMaxFds) {
      return InvalidArgumentError("send to {}: {} descriptors, at most {}", peer_, fds.size(),
                                  kMaxFds);
    }
    uint64_t total = 0;
    for (const auto& s : payload) total += s.size();
    if (total != header.length) {
      return InvalidArgumentError("send to {}: payload has {} bytes, header says {}", peer_, total,
                                  header.length);
    }
    std::byte hdr[kHeaderBytes];
    EncodeHeader(header, hdr);
    std::vector<iovec> iov;
    iov.reserve(payload.size() + 1);
    iov.push_back({hdr, kHeaderBytes});
    for (const auto& s : payload) {
      if (!s.empty()) iov.push_back({const_cast<std::byte*>(s.data()), s.size()});
    }
    std::lock_guard<std::mutex> lock(send_mu_);
    return Transfer(iov, /*writing=*/true, deadline, "send", /*mid=*/false, fds);
  }

  StatusOr<MessageHeader> ReceiveHeader(Deadline deadline) override {
    if (remaining_ != 0) {
      return FailedPreconditionError(
          "receive from {}: {} payload bytes of the previous message "
          "not consumed",
          peer_, remaining_);
    }
    std::byte buf[kHeaderBytes];
    std::vector<iovec> iov{{buf, kHeaderBytes}};
    TANDEM_RETURN_IF_ERROR(Transfer(iov, /*writing=*/false, deadline, "receive"));
    MessageHeader h;
    if (!DecodeHeader(buf, &h)) {
      Break();
      return UnavailableError("receive from {}: bad frame magic; connection closed", peer_);
    }
    remaining_ = h.length;
    return h;
  }

  Status ReceivePayload(std::span<const ByteSpan> dest, Deadline deadline) override {
    uint64_t total = 0;
    std::vector<iovec> iov;
    iov.reserve(dest.size());
    for (const auto& s : dest) {
      total += s.size();
      if (!s.empty()) iov.push_back({s.data(), s.size()});
    }
    if (total > remaining_) {
      return InvalidArgumentError("receive from {}: asked for {} payload bytes, {} remain", peer_,
                                  total, remaining_);
    }
    // Any failure here is mid-frame, so Transfer breaks the connection.
    TANDEM_RETURN_IF_ERROR(Transfer(iov, /*writing=*/false, deadline, "receive", /*mid=*/true));
    remaining_ -= total;
    return Status::Ok();
  }

  Status DiscardPayload(uint64_t bytes, Deadline deadline) override {
    if (bytes > remaining_) {
      return InvalidArgumentError("receive from {}: asked to discard {} bytes, {} remain", peer_,
                                  bytes, remaining_);
    }
    std::vector<std::byte> scratch(std::min<uint64_t>(bytes, 1 << 16));
    while (bytes > 0) {
      size_t n = std::min<uint64_t>(bytes, scratch.size());
      ByteSpan span(scratch.data(), n);
      TANDEM_RETURN_IF_ERROR(ReceivePayload({&span, 1}, deadline));
      bytes -= n;
    }
    return Status::Ok();
  }

  uint64_t payload_remaining() const override { return remaining_; }

  void Shutdown() override {
    if (!shutdown_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
  }
  bool broken() const override { return broken_.load() || shutdown_.load(); }
  const std::string& peer() const override { return peer_; }
  std::vector<int> TakeFds() override { return std::exchange(fds_, {}); }
  int peer_pid() const override { return peer_pid_; }
  int64_t peer_uid() const override { return peer_uid_; }

 private:
  void Break() {
    broken_ = true;
    ::shutdown(fd_, SHUT_RDWR);
  }

  // Moves every byte of `iov` (consumed in place). `mid` says a frame is already under way.
  // `fds` go with the first byte sent; descriptors that arrive with read bytes are kept in fds_.
  Status Transfer(std::vector<iovec>& iov, bool writing, Deadline deadline, std::string_view op,
                  bool mid = false, std::span<const int> fds = {}) {
    if (shutdown_.load()) return CancelledError("{} {}: connection shut down locally", op, peer_);
    if (broken_.load()) return UnavailableError("{} {}: connection is broken", op, peer_);
    size_t first = 0;
    bool moved = mid;
    while (first < iov.size()) {
      int n = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
      ssize_t r;
      msghdr msg{};
      msg.msg_iov = iov.data() + first;
      msg.msg_iovlen = n;
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
      short want = writing ? POLLOUT : POLLIN;
      std::string tls_error;
      if (ssl_ != nullptr) {
        r = TlsIo(iov[first], writing, &want, &tls_error);
      } else if (writing) {
        if (!fds.empty() && !moved) {
          msg.msg_control = control;
          msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
          cmsghdr* c = CMSG_FIRSTHDR(&msg);
          c->cmsg_level = SOL_SOCKET;
          c->cmsg_type = SCM_RIGHTS;
          c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
          std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
        }
        r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      } else if (unix_) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        r = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (r > 0) KeepFds(msg);
      } else {
        r = ::readv(fd_, iov.data() + first, n);
      }
      if (r < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) {
          // TLS: bytes another thread's call pulled in may sit decrypted in the session, which
          // no poll sees: wait in slices and ask the session again.
          const Deadline until =
              ssl_ == nullptr ? deadline
                              : std::min(deadline, std::chrono::steady_clock::now() +
                                                       std::chrono::milliseconds(kPollSliceMs));
          Status s = WaitFd(fd_, want, until, shutdown_, fmt::format("{} {}", op, peer_));
          if (!s.ok() && s.code() == StatusCode::kDeadlineExceeded &&
              std::chrono::steady_clock::now() < deadline) {
            continue;
          }
          if (!s.ok()) {
            if (moved) Break();
            return s;
          }
          continue;
        }
        if (err == EPROTO && ssl_ != nullptr) {
          Break();
          return UnavailableError("{} {}: TLS: {}", op, peer_, tls_error);
        }
        Break();
        if (shutdown_.load())
          return CancelledError("{} {}: connection shut down locally", op, peer_);
        if (err == ECONNRESET || err == EPIPE) {
          return UnavailableError("{} {}: connection reset by peer", op, peer_);
        }
        return UnavailableError("{} {}: {}", op, peer_, ErrnoText(errno));
      }
      if (r == 0 && !writing) {
        Break();
        if (shutdown_.load())
          return CancelledError("{} {}: connection shut down locally", op, peer_);
        return UnavailableError("{} {}: peer closed the connection{}", op, peer_,
                                moved ? " mid-message" : "");
      }
      moved = moved || r > 0;
      size_t left = static_cast<size_t>(r);
      while (first < iov.size() && left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
      }
      if (left > 0) {
        iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return Status::Ok();
  }

  // One TLS read or write into / from `v` (non-blocking, the session locked for the call): bytes
  // moved; 0 when the peer closed (reads); -1 with errno EAGAIN (`want`: what to poll for),
  // EPIPE or EPROTO (`error` says why).
  ssize_t TlsIo(const iovec& v, bool writing, short* want, std::string* error) {
    std::lock_guard<std::mutex> lock(ssl_mu_);
    if (!tls_failure_.empty()) {  // the session failed in the other thread's call: say why
      *error = tls_failure_;
      errno = EPROTO;
      return -1;
    }
    size_t done = 0;
    ERR_clear_error();
    const int rc = writing ? SSL_write_ex(ssl_, v.iov_base, v.iov_len, &done)
                           : SSL_read_ex(ssl_, v.iov_base, v.iov_len, &done);
    if (rc == 1) return static_cast<ssize_t>(done);
    const int sys = errno;
    const int e = SSL_get_error(ssl_, rc);
    switch (e) {
      case SSL_ERROR_WANT_READ:
        *want = POLLIN;
        errno = EAGAIN;
        return -1;
      case SSL_ERROR_WANT_WRITE:
        *want = POLLOUT;
        errno = EAGAIN;
        return -1;
      case SSL_ERROR_ZERO_RETURN:
        if (!writing) return 0;
        errno = EPIPE;
        return -1;
      case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
          if (sys == 0 || sys == ECONNRESET || sys == EPIPE) {
            if (!writing && sys == 0) return 0;  // EOF without close_notify
            errno = sys == 0 ? EPIPE : sys;
            return -1;
          }
          errno = sys;
          return -1;
        }
        [[fallthrough]];
      default:
        tls_failure_ = TlsErrorText();
        *error = tls_failure_;
        errno = EPROTO;
        return -1;
    }
  }

  void KeepFds(msghdr& msg) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < n; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        fds_.push_back(fd);
      }
    }
  }

  static constexpr size_t kMaxFds = 4;
  const int fd_;
  const std::string peer_;
  const bool unix_;
  int peer_pid_ = 0;
  int64_t peer_uid_ = -1;
  SSL* const ssl_;           // TLS session (tcp with KvTls), or nullptr
  std::mutex ssl_mu_;        // one SSL call at a time (reads and writes come from two threads)
  std::string tls_failure_;  // why the session failed (guarded by ssl_mu_), or empty
  std::vector<int> fds_;     // reader thread only
  std::mutex send_mu_;
  uint64_t remaining_ = 0;  // reader thread only
  std::atomic<bool> shutdown_{false};
  std::atomic<bool> broken_{false};
};

class StreamListener final : public Listener {
 public:
  StreamListener(int fd, int port, std::string unlink_path, AcceptedFn on_accept)
      : fd_(fd),
        port_(port),
        unlink_path_(std::move(unlink_path)),
        on_accept_(std::move(on_accept)) {}
  ~StreamListener() override {
    ::close(fd_);
    if (!unlink_path_.empty()) ::unlink(unlink_path_.c_str());
  }

  StatusOr<std::unique_ptr<Connection>> Accept(Deadline deadline) override {
    while (true) {
      TANDEM_RETURN_IF_ERROR(WaitFd(fd_, POLLIN, deadline, closed_, "accept"));
      sockaddr_storage ss{};
      socklen_t len = sizeof(ss);
      int fd = ::accept4(fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (closed_.load()) return CancelledError("accept: listener closed");
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
          continue;
        }
        return UnavailableError("accept on port {}: {}", port_, ErrnoText(errno));
      }
      std::unique_ptr<Connection> conn = on_accept_(fd, ss);  // closes fd when it gives none
      if (conn == nullptr) return UnavailableError("accept on port {}: {}", port_, TlsErrorText());
      return conn;
    }
  }

  void Close() override {
    if (!closed_.exchange(true)) ::shutdown(fd_, SHUT_RDWR);
  }
  int port() const override { return port_; }

 private:
  const int fd_;
  const int port_;
  const std::string unlink_path_;
  const AcceptedFn on_accept_;
  std::atomic<bool> closed_{false};
};

}  // namespace

std::unique_ptr<Connection> MakeStreamConnection(int fd, std::string peer, bool unix_socket,
                                                 SSL* ssl) {
  return std::make_unique<StreamConnection>(fd, std::move(peer), unix_socket, ssl);
}

std::unique_ptr<Listener> MakeStreamListener(int fd, int port, std::string unlink_path,
                                             AcceptedFn on_accept) {
  return std::make_unique<StreamListener>(fd, port, std::move(unlink_path), std::move(on_accept));
}

Status Connection::SendWithFds(const MessageHeader&, std::span<const ConstByteSpan>,
                               std::span<const int>, Deadline) {
  return UnimplementedError("this connection cannot pass descriptors");
}

}  // namespace tandem
