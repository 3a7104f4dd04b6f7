#include "http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <unordered_map>

#include <fmt/format.h>
#include <openssl/err.h>

#include "body_framing.h"
#include "connection_stream.h"
#include "connection_watch.h"
#include "openai_protocol.h"
#include "tandem/common/logging.h"

namespace tandem::http {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::milliseconds kAcceptPause{100};  // after the process ran out of fds

const char* ReasonPhrase(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 408:
      return "Request Timeout";
    case 413:
      return "Payload Too Large";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

// Writes a complete error response without blocking (what does not fit in the socket buffer
// is dropped: the connection closes next).
void SendError(int fd, const ApiError& error) {
  const std::string body = error.ToJson().dump();
  const std::string msg = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      error.http_status, ReasonPhrase(error.http_status), body.size(), body);
  (void)send(fd, msg.data(), msg.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// Reads what the client already sent and drops it, so that closing sends FIN, not RST (which
// could reach the client before it read the answer).
void DrainInput(int fd) {
  char buf[16 * 1024];
  for (int i = 0; i < 4; ++i) {
    if (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) return;
  }
}

// SendError over TLS when the handshake is done (non-blocking too: what does not fit is
// dropped); nothing before it (no byte of a plaintext answer may go into a TLS stream).
void SendErrorOn(int fd, SSL* ssl, bool handshaken, const ApiError& error) {
  if (ssl == nullptr) return SendError(fd, error);
  if (!handshaken) return;
  const std::string body = error.ToJson().dump();
  const std::string msg = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
      "Connection: close\r\n\r\n{}",
      error.http_status, ReasonPhrase(error.http_status), body.size(), body);
  ERR_clear_error();
  (void)SSL_write(ssl, msg.data(), static_cast<int>(msg.size()));
  ERR_clear_error();
}

// The interim answer to "Expect: 100-continue" (what cpp-httplib sends for it).
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

// GET or HEAD of one of `paths` (query ignored)?
bool IsProbe(const std::string& buf, const std::vector<std::string>& paths) {
  const std::string_view line(buf.data(), std::min(buf.find("\r\n"), buf.size()));
  const size_t sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return false;
  const std::string_view method = line.substr(0, sp1);
  if (method != "GET" && method != "HEAD") return false;
  std::string_view target = line.substr(sp1 + 1);
  target = target.substr(0, std::min(target.find(' '), target.find('?')));
  return std::find(paths.begin(), paths.end(), target) != paths.end();
}

// The client's IP address, as the per-address cap counts it ("?" when not IPv4 or IPv6).
std::string AddressOf(const sockaddr_storage& peer) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (peer.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&peer);
    if (inet_ntop(AF_INET, &a->sin_addr, buf, sizeof(buf)) != nullptr) return buf;
  } else if (peer.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&peer);
    if (inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof(buf)) != nullptr) return buf;
  }
  return "?";
}

// The reason of the last OpenSSL error, for logs.
std::string SslError() {
  char buf[256] = {0};
  ERR_error_string_n(ERR_peek_last_error(), buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

}  // namespace

struct HttpServer::Conn {
  ~Conn() { SSL_free(ssl); }  // null-safe

  int fd = -1;
  SSL* ssl = nullptr;        // HTTPS: owned, freed with the Conn (before Close closes the fd)
  bool handshaken = false;   // HTTPS: SSL_accept done
  bool polling_out = false;  // HTTPS: the reactor waits for writable too (a TLS step wants it)
  std::string address;       // the client's IP when a per-address cap counts it, else empty
  std::string buf;           // received, not yet given to a request
  bool fresh = true;         // no request served yet
  int32_t requests = 0;
  Clock::time_point deadline;
  // The request at the front of buf, while the reactor waits for it:
  size_t scanned = 0;          // bytes of buf searched for the end of the headers
  size_t head_end = 0;         // its headers' bytes once complete (waiting for its body), else 0
  RequestHead head;            // its framing once its headers are complete
  ChunkedBodyScanner chunked;  // a chunked body's end
  size_t continue_left = 0;    // bytes of kContinue still to send
  size_t accounted = 0;        // bytes of buf counted in the reactor's body_bytes_
};

// The reactor: owns the listening socket and every connection waiting for request headers.
class HttpServer::Reactor {
 public:
  Reactor(HttpServer* server, int listen_fd) : s_(server), listen_fd_(listen_fd) {}
  ~Reactor() {
    if (epoll_fd_ >= 0) close(epoll_fd_);
    if (wake_fd_ >= 0) close(wake_fd_);
    if (listen_fd_ >= 0) close(listen_fd_);
  }

  Status Init() {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (epoll_fd_ < 0 || wake_fd_ < 0) {
      return UnavailableError("HTTP: epoll / eventfd: {}", std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = listen_fd_;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) {
      return UnavailableError("HTTP: epoll_ctl: {}", std::strerror(errno));
    }
    ev.data.fd = wake_fd_;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
      return UnavailableError("HTTP: epoll_ctl: {}", std::strerror(errno));
    }
    return Status::Ok();
  }

  void Run() {
    std::vector<epoll_event> events(256);
    while (!s_->stopping_.load()) {
      const int n =
          epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), NextTimeoutMs());
      if (n < 0 && errno != EINTR) {
        TLOG_ERROR("http: epoll_wait: {}; the HTTP listener stops", std::strerror(errno));
        break;
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == listen_fd_) {
          Accept();
        } else if (fd == wake_fd_) {
          uint64_t v;
          (void)!::read(wake_fd_, &v, sizeof(v));
          TakeReturned();
        } else {
          OnReadable(fd);
        }
      }
      const auto now = Clock::now();
      Expire(now);
      if (accept_paused_ && now >= accept_resume_) SetAccepting(true);
    }
    // Stopped: no more connections come back; close those waiting.
    std::vector<std::unique_ptr<Conn>> returned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = true;
      returned.swap(returned_);
    }
    for (auto& c : returned) s_->Close(std::move(c), "shutdown");
    for (auto& [fd, c] : waiting_) s_->Close(std::move(c), "shutdown");
    waiting_.clear();
    deadlines_.clear();
    close(listen_fd_);
    listen_fd_ = -1;
  }

  void Wake() {
    const uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
  }

  // From a worker: `c` waits for its next request.
  void Return(std::unique_ptr<Conn> c) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!closed_) {
        returned_.push_back(std::move(c));
        Wake();
        return;
      }
    }
    s_->Close(std::move(c), "shutdown");
  }

 private:
  int NextTimeoutMs() const {
    auto next = Clock::now() + std::chrono::seconds(1);
    if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
    if (accept_paused_) next = std::min(next, accept_resume_);
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count() + 1;
    return static_cast<int>(std::max<int64_t>(0, ms));
  }

  void SetAccepting(bool on) {
    epoll_event ev{};
    ev.events = on ? static_cast<uint32_t>(EPOLLIN) : 0u;
    ev.data.fd = listen_fd_;
    (void)epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, listen_fd_, &ev);
    accept_paused_ = !on;
    if (!on) accept_resume_ = Clock::now() + kAcceptPause;
  }

  void Accept() {
    const HttpServerOptions& o = s_->options_;
    for (;;) {
      sockaddr_storage peer{};
      socklen_t peer_len = sizeof(peer);
      const int fd = accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &peer_len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          TLOG_WARN("http: cannot accept ({}) with {} connections open; pausing accepts",
                    std::strerror(errno), s_->open_.load());
          SetAccepting(false);
        }
        return;
      }
      if (s_->open_.load() >= o.max_connections) {
        s_->CountClosed("over_limit");  // first: whoever sees the answer sees it counted
        DrainInput(fd);
        if (s_->ssl_ctx_ != nullptr) {  // no plaintext answer into a TLS handshake
          close(fd);
          continue;
        }
        SendError(fd, ApiError{503,
                               fmt::format("the server has {} connections open, its limit "
                                           "(--http-max-connections); retry later",
                                           o.max_connections),
                               "server_error", "", "too_many_connections"});
        close(fd);
        continue;
      }
      std::string address;
      if (o.max_connections_per_address > 0) {
        address = AddressOf(peer);
        int32_t from_it = 0;
        if (!s_->TakeAddressSlot(address, &from_it)) {
          s_->CountClosed("over_address_limit");
          DrainInput(fd);
          if (s_->ssl_ctx_ == nullptr) {
            SendError(fd, ApiError{503,
                                   fmt::format("{} connections from {} are open, the limit per "
                                               "address (--http-max-connections-per-address); "
                                               "retry later",
                                               from_it, address),
                                   "server_error", "", "too_many_connections"});
          }
          close(fd);
          continue;
        }
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      s_->open_.fetch_add(1);
      if (s_->metrics_ != nullptr) s_->metrics_->http_connections().Increment();
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      c->address = std::move(address);
      if (s_->ssl_ctx_ != nullptr) {
        c->ssl = SSL_new(s_->ssl_ctx_.get());
        if (c->ssl == nullptr || SSL_set_fd(c->ssl, fd) != 1) {
          TLOG_WARN("http: SSL_new: {}", SslError());
          s_->Close(std::move(c), "error");
          continue;
        }
        SSL_set_accept_state(c->ssl);
      }
      Wait(std::move(c));
    }
  }

  void TakeReturned() {
    std::vector<std::unique_ptr<Conn>> returned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      returned.swap(returned_);
    }
    for (auto& c : returned) Wait(std::move(c));
  }

  // `c` (in no table) waits for complete headers and body, or goes to a worker when it has them.
  void Wait(std::unique_ptr<Conn> c) {
    const Phase phase = Examine(*c);
    if (phase == Phase::kTooLarge) return RefuseTooLarge(std::move(c));
    if (phase == Phase::kReady && c->continue_left == 0) return Dispatch(std::move(c));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = c->fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
      TLOG_WARN("http: epoll_ctl: {}", std::strerror(errno));
      return s_->Close(std::move(c), "error");
    }
    c->polling_out = false;
    c->deadline =
        Clock::now() + (c->head_end > 0 ? s_->options_.body_timeout : s_->options_.header_timeout);
    deadlines_.emplace(c->deadline, c->fd);
    const int fd = c->fd;
    // Decrypted bytes epoll cannot see, or a 100 Continue to send: go on at once.
    // In its body phase: counted against max_buffered_body_bytes there.
    const bool go_on =
        (c->ssl != nullptr && SSL_pending(c->ssl) > 0) || c->continue_left > 0 || c->head_end > 0;
    waiting_.emplace(fd, std::move(c));
    if (go_on) OnReadable(fd);
  }

  enum class Phase { kHeaders, kBody, kReady, kTooLarge };

  // Where the request at the front of c.buf stands: waiting for headers, for its body, ready
  // for a worker (complete, or for the existing code to read or refuse: body_framing.h), or
  // refused here (a Content-Length over max_body_bytes that a handler would read).
  // When its headers have just completed and its body has not, `c` enters its body phase:
  // head_end set, and a client that expects 100 Continue gets it (its Expect header removed,
  // so that cpp-httplib does not send another).
  Phase Examine(Conn& c) {
    const HttpServerOptions& o = s_->options_;
    if (c.head_end == 0) {
      const size_t end = c.buf.find("\r\n\r\n", c.scanned > 3 ? c.scanned - 3 : 0);
      c.scanned = c.buf.size();
      if (end == std::string::npos) return Phase::kHeaders;
      c.head = ParseRequestHead(std::string_view(c.buf).substr(0, end + 4), o.max_body_bytes);
      // Refused here, unread: a worker's cpp-httplib would read and drop the declared bytes
      // before its 413, holding a thread for as long as the client takes to send them.
      if (c.head.too_large && (!o.waits_for_body || o.waits_for_body(c.head))) {
        return Phase::kTooLarge;
      }
      if ((c.head.body != BodyKind::kLength && c.head.body != BodyKind::kChunked) ||
          (o.waits_for_body && !o.waits_for_body(c.head))) {
        return Phase::kReady;
      }
      c.head_end = end + 4;
      c.chunked = ChunkedBodyScanner(o.max_body_bytes);
      if (BodyComplete(c)) return Phase::kReady;
      if (c.head.expect_continue) {
        c.head_end -= RemoveExpectHeaders(&c.buf, c.head_end);
        c.continue_left = kContinue.size();
      }
      return Phase::kBody;
    }
    return BodyComplete(c) ? Phase::kReady : Phase::kBody;
  }

  // c's body is all in c.buf, or the reactor waits for it no longer (framing cpp-httplib
  // answers, or more buffered than the bound: a worker reads the rest).
  bool BodyComplete(Conn& c) {
    const std::string_view body = std::string_view(c.buf).substr(c.head_end);
    if (c.head.body == BodyKind::kLength) return body.size() >= c.head.length;
    if (c.chunked.Scan(body) != ChunkedBodyScanner::Result::kNeedMore) return true;
    return body.size() > s_->options_.max_body_bytes + s_->options_.max_header_bytes;
  }

  // The bytes c.buf may hold while the reactor reads: the headers' bound, and in the body phase
  // the body's bound plus as much again as the headers' for chunk framing and trailers.
  size_t ReadCap(const Conn& c) const {
    const HttpServerOptions& o = s_->options_;
    if (c.head_end == 0) return o.max_header_bytes;
    return c.head_end + o.max_body_bytes + o.max_header_bytes;
  }

  // Sends what is left of 100 Continue without blocking. False when the connection failed.
  bool SendContinue(Conn& c) {
    while (c.continue_left > 0) {
      const char* from = kContinue.data() + (kContinue.size() - c.continue_left);
      if (c.ssl != nullptr) {
        ERR_clear_error();
        // After WANT_WRITE OpenSSL needs the same arguments again: nothing moved, so they are.
        const int n = SSL_write(c.ssl, from, static_cast<int>(c.continue_left));
        if (n > 0) {
          c.continue_left -= static_cast<size_t>(n);
          continue;
        }
        const int err = SSL_get_error(c.ssl, n);
        ERR_clear_error();
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return false;
        if (err == SSL_ERROR_WANT_WRITE) WantWrite(c, true);
        return true;
      }
      const ssize_t n = send(c.fd, from, c.continue_left, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.continue_left -= static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return false;
      WantWrite(c, true);
      return true;
    }
    if (c.ssl == nullptr) WantWrite(c, false);
    return true;
  }

  // Sets the events `c` waits for: readable, and writable too while a TLS step needs it.
  void WantWrite(Conn& c, bool on) {
    if (c.polling_out == on) return;
    c.polling_out = on;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (on ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.fd = c.fd;
    (void)epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  // HTTPS: advances the handshake, then reads decrypted bytes into c.buf. Returns false when
  // the connection is done for (closed by the client, TLS error: already closed here).
  bool ReadTls(Conn& c, bool* eof) {
    const int fd = c.fd;
    if (!c.handshaken) {
      ERR_clear_error();
      const int r = SSL_accept(c.ssl);
      if (r != 1) {
        const int err = SSL_get_error(c.ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          WantWrite(c, err == SSL_ERROR_WANT_WRITE);
          return true;
        }
        const bool plaintext = ERR_GET_REASON(ERR_peek_error()) == SSL_R_HTTP_REQUEST;
        const std::string why = SslError();
        auto conn = Remove(fd);
        if (plaintext) {
          DrainInput(fd);
          SendError(fd, ApiError{400, "this port speaks HTTPS: use https://",
                                 "invalid_request_error", "", "tls_required"});
        } else {
          TLOG_DEBUG("http: TLS handshake failed: {}", why);
        }
        s_->Close(std::move(conn), plaintext ? "plaintext_on_tls" : "tls_handshake");
        return false;
      }
      c.handshaken = true;
    }
    char chunk[16 * 1024];
    for (;;) {
      ERR_clear_error();
      const int n = SSL_read(c.ssl, chunk, sizeof(chunk));
      if (n > 0) {
        c.buf.append(chunk, static_cast<size_t>(n));
        if (c.buf.size() > ReadCap(c)) break;
        continue;
      }
      const int err = SSL_get_error(c.ssl, n);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        WantWrite(c, err == SSL_ERROR_WANT_WRITE);
        break;
      }
      ERR_clear_error();
      *eof = true;
      break;
    }
    return true;
  }

  std::unique_ptr<Conn> Remove(int fd) {
    auto it = waiting_.find(fd);
    if (it == waiting_.end()) return nullptr;
    std::unique_ptr<Conn> c = std::move(it->second);
    waiting_.erase(it);
    deadlines_.erase({c->deadline, fd});
    body_bytes_ -= c->accounted;
    c->accounted = 0;
    (void)epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    return c;
  }

  // Readable (or writable, while a TLS step or 100 Continue waits for it): reads, then moves
  // the connection on (a worker, a body phase, an answer and a close).
  void OnReadable(int fd) {
    auto it = waiting_.find(fd);
    if (it == waiting_.end()) return;
    Conn& c = *it->second;
    for (;;) {
      const bool had_headers = c.head_end > 0;
      bool eof = false;
      char chunk[16 * 1024];
      if (c.ssl != nullptr && !ReadTls(c, &eof)) return;
      while (c.ssl == nullptr) {
        const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
          c.buf.append(chunk, static_cast<size_t>(n));
          if (c.buf.size() > ReadCap(c)) break;
          continue;
        }
        if (n < 0 && errno == EINTR) continue;
        eof = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
      }
      const Phase phase = Examine(c);
      if (phase == Phase::kTooLarge) return RefuseTooLarge(Remove(fd));
      if (!had_headers && c.head_end > 0) {  // its body is next: the body deadline
        deadlines_.erase({c.deadline, fd});
        c.deadline = Clock::now() + s_->options_.body_timeout;
        deadlines_.emplace(c.deadline, fd);
      }
      if (!SendContinue(c)) return s_->Close(Remove(fd), "client_closed");
      if (phase == Phase::kReady && c.continue_left == 0) return Dispatch(Remove(fd));
      if (phase == Phase::kBody) {
        body_bytes_ += c.buf.size() - c.accounted;
        c.accounted = c.buf.size();
        // Over the bound on all bodies held: a worker reads the rest (holding a thread).
        if (body_bytes_ > s_->options_.max_buffered_body_bytes && c.continue_left == 0) {
          return Dispatch(Remove(fd));
        }
      }
      if (phase == Phase::kHeaders && c.buf.size() > s_->options_.max_header_bytes) {
        auto conn = Remove(fd);
        SendErrorOn(fd, conn->ssl, conn->handshaken,
                    ApiError{431,
                             fmt::format("the request headers are larger than {} bytes",
                                         s_->options_.max_header_bytes),
                             "invalid_request_error", "", "headers_too_large"});
        return s_->Close(std::move(conn), "headers_too_large");
      }
      if (eof) {
        // A client that ended its side within a body still gets the existing code's answer
        // (400: truncated); one that sent no complete headers is closed.
        if (phase == Phase::kHeaders || c.continue_left > 0) {
          return s_->Close(Remove(fd), "client_closed");
        }
        return Dispatch(Remove(fd));
      }
      // Decrypted bytes epoll cannot see (reading stopped at the headers' cap): read on.
      if (phase == Phase::kBody && c.ssl != nullptr && SSL_pending(c.ssl) > 0) continue;
      return;
    }
  }

  void Expire(Clock::time_point now) {
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto c = Remove(deadlines_.begin()->second);
      if (c->buf.empty() && !c->fresh) {
        s_->Close(std::move(c), "idle");
        continue;
      }
      // Headers complete: it was waiting for its body.
      const bool body = c->head_end > 0;
      if (body && c->ssl == nullptr) DrainInput(c->fd);
      SendErrorOn(
          c->fd, c->ssl, c->handshaken,
          ApiError{408,
                   fmt::format(
                       "the request {} did not arrive within {} ms ({})", body ? "body" : "headers",
                       (body ? s_->options_.body_timeout : s_->options_.header_timeout).count(),
                       body ? "--http-body-timeout-ms" : "--http-header-timeout-ms"),
                   "invalid_request_error", "", "request_timeout"});
      s_->Close(std::move(c), body ? "body_timeout" : "header_timeout");
    }
  }

  // A Content-Length over max_body_bytes: 413 naming the bound and its flag, then closed (the
  // body is never read; what the client already sent is dropped so that the close is a FIN).
  void RefuseTooLarge(std::unique_ptr<Conn> c) {
    if (c->ssl == nullptr) DrainInput(c->fd);
    SendErrorOn(c->fd, c->ssl, c->handshaken,
                ApiError{413,
                         fmt::format("the request body (Content-Length) is larger than {} bytes, "
                                     "the limit (--max-body-bytes)",
                                     s_->options_.max_body_bytes),
                         "invalid_request_error", "", "request_too_large"});
    s_->Close(std::move(c), "body_too_large");
  }

  void Dispatch(std::unique_ptr<Conn> c) {
    c->scanned = 0;  // the next request starts from scratch
    c->head_end = 0;
    ElasticThreadPool& pool =
        IsProbe(c->buf, s_->options_.probe_paths) ? s_->probe_pool_ : s_->pool_;
    Conn* raw = c.release();
    if (!pool.Submit([s = s_, raw] { s->Serve(std::unique_ptr<Conn>(raw)); })) {
      c.reset(raw);
      SendErrorOn(c->fd, c->ssl, c->handshaken,
                  ApiError{503, "the server has no thread to serve this request", "server_error",
                           "", "no_thread"});
      s_->Close(std::move(c), "no_thread");
    }
  }

  HttpServer* const s_;
  int listen_fd_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::unordered_map<int, std::unique_ptr<Conn>> waiting_;
  uint64_t body_bytes_ = 0;  // buffered by connections in their body phase (Conn::accounted)
  std::set<std::pair<Clock::time_point, int>> deadlines_;
  bool accept_paused_ = false;
  Clock::time_point accept_resume_;
  std::mutex mu_;  // guards returned_, closed_
  std::vector<std::unique_ptr<Conn>> returned_;
  bool closed_ = false;
};

HttpServer::HttpServer(HttpServerOptions options, Metrics* metrics)
    : options_(std::move(options)),
      metrics_(metrics),
      pool_(options_.max_threads, options_.thread_idle),
      probe_pool_(options_.probe_threads, options_.thread_idle) {
  const auto secs = [](std::chrono::milliseconds ms) {
    return static_cast<time_t>(std::max<int64_t>(1, ms.count() / 1000));
  };
  set_keep_alive_timeout(secs(options_.header_timeout));
  set_keep_alive_max_count(static_cast<size_t>(std::max(1, options_.max_requests_per_connection)));
  set_read_timeout(secs(options_.read_timeout));
  set_write_timeout(secs(options_.write_timeout));
}

HttpServer::~HttpServer() { Stop(); }

Status HttpServer::InitTls() {
  if (options_.tls_cert_file.empty() && options_.tls_key_file.empty()) return Status::Ok();
  if (options_.tls_cert_file.empty() || options_.tls_key_file.empty()) {
    return InvalidArgumentError("HTTPS needs both a certificate and its key");
  }
  ssl_ctx_.reset(SSL_CTX_new(TLS_server_method()));
  if (ssl_ctx_ == nullptr) return UnavailableError("HTTPS: SSL_CTX_new: {}", SslError());
  SSL_CTX* ctx = ssl_ctx_.get();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  // Writes from a worker may return part of a buffer (as send does) and be retried with the
  // rest from another address.
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_use_certificate_chain_file(ctx, options_.tls_cert_file.c_str()) != 1) {
    return InvalidArgumentError("HTTPS: --tls-cert {}: {}", options_.tls_cert_file, SslError());
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, options_.tls_key_file.c_str(), SSL_FILETYPE_PEM) != 1) {
    return InvalidArgumentError("HTTPS: --tls-key {}: {}", options_.tls_key_file, SslError());
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    return InvalidArgumentError("HTTPS: --tls-key {} is not the key of --tls-cert {}: {}",
                                options_.tls_key_file, options_.tls_cert_file, SslError());
  }
  // SSL_write writes to the socket with write(2), which raises SIGPIPE when the client has
  // gone; the server takes EPIPE instead, as send(MSG_NOSIGNAL) gives it on plain HTTP.
  signal(SIGPIPE, SIG_IGN);
  return Status::Ok();
}

Status HttpServer::Start() {
  TANDEM_RETURN_IF_ERROR(InitTls());
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(options_.port);
  if (getaddrinfo(options_.host.c_str(), port.c_str(), &hints, &found) != 0 || !found) {
    return UnavailableError("HTTP API cannot resolve {}", options_.host);
  }
  int fd = -1;
  for (addrinfo* a = found; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, SOMAXCONN) != 0) {
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(found);
  if (fd < 0) return UnavailableError("HTTP API cannot listen on {}:{}", options_.host, port);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(bound).sin6_port
                                            : reinterpret_cast<sockaddr_in&>(bound).sin_port);
  reactor_ = std::make_unique<Reactor>(this, fd);
  TANDEM_RETURN_IF_ERROR(reactor_->Init());
  // cpp-httplib ends streaming responses once svr_sock_ is invalid: valid while serving.
  svr_sock_ = fd;
  reactor_thread_ = std::thread([this] { reactor_->Run(); });
  return Status::Ok();
}

void HttpServer::Stop() {
  std::lock_guard<std::mutex> lock(stop_mu_);
  stopping_.store(true);
  if (reactor_) reactor_->Wake();
  if (reactor_thread_.joinable()) reactor_thread_.join();
  svr_sock_ = INVALID_SOCKET;
  pool_.Shutdown();
  probe_pool_.Shutdown();
}

int32_t HttpServer::threads() const { return pool_.threads() + probe_pool_.threads(); }

void HttpServer::Serve(std::unique_ptr<Conn> c) {
  if (stopping_.load()) return Close(std::move(c), "shutdown");
  ConnectionStream strm(c->fd, c->ssl, std::move(c->buf), options_.read_timeout,
                        options_.write_timeout);
  ++c->requests;
  const bool last = c->requests >= options_.max_requests_per_connection;
  bool closed = false;
  bool ok;
  {
    const ServingSocket serving(c->fd);  // ConnectionWatch finds it without a /proc scan
    ok = process_request(strm, last, closed, nullptr);
  }
  c->buf = strm.TakeBuffered();
  c->fresh = false;
  if (!ok || closed || last) return Close(std::move(c), "served");
  reactor_->Return(std::move(c));
}

void HttpServer::Close(std::unique_ptr<Conn> c, const char* reason) {
  if (c == nullptr) return;
  // Counted first: whoever sees the connection closed sees it counted.
  open_.fetch_sub(1);
  if (metrics_ != nullptr) metrics_->http_connections().Decrement();
  if (!c->address.empty()) GiveAddressSlot(c->address);
  CountClosed(reason);
  if (c->ssl != nullptr && c->handshaken) {
    ERR_clear_error();
    (void)SSL_shutdown(c->ssl);  // close_notify, without waiting for the client's
    ERR_clear_error();
  }
  const int fd = c->fd;
  c.reset();  // SSL_free: the SSL object never outlives its descriptor
  close(fd);
}

bool HttpServer::TakeAddressSlot(const std::string& address, int32_t* open_from_it) {
  std::lock_guard<std::mutex> lock(address_mu_);
  int32_t& n = per_address_[address];
  *open_from_it = n;
  if (n >= options_.max_connections_per_address) {
    if (n == 0) per_address_.erase(address);
    return false;
  }
  ++n;
  return true;
}

void HttpServer::GiveAddressSlot(const std::string& address) {
  std::lock_guard<std::mutex> lock(address_mu_);
  auto it = per_address_.find(address);
  if (it != per_address_.end() && --it->second <= 0) per_address_.erase(it);
}

void HttpServer::CountClosed(const char* reason) {
  if (metrics_ != nullptr) metrics_->http_connections_closed(reason).Increment();
}

}  // namespace tandem::http
