#include "http_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <set>
#include <unordered_map>

#include <fmt/format.h>

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
    case 408:
      return "Request Timeout";
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

bool HeadersComplete(const std::string& buf, size_t from) {
  return buf.find("\r\n\r\n", from > 3 ? from - 3 : 0) != std::string::npos;
}

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

}  // namespace

struct HttpServer::Conn {
  int fd = -1;
  std::string buf;    // received, not yet given to a request
  bool fresh = true;  // no request served yet
  int32_t requests = 0;
  Clock::time_point deadline;
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
      const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
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
        SendError(fd, ApiError{503,
                               fmt::format("the server has {} connections open, its limit "
                                           "(--http-max-connections); retry later",
                                           o.max_connections),
                               "server_error", "", "too_many_connections"});
        close(fd);
        continue;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      s_->open_.fetch_add(1);
      if (s_->metrics_ != nullptr) s_->metrics_->http_connections().Increment();
      auto c = std::make_unique<Conn>();
      c->fd = fd;
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

  // `c` (in no table) waits for complete headers, or goes to a worker when it has them.
  void Wait(std::unique_ptr<Conn> c) {
    if (HeadersComplete(c->buf, 0)) return Dispatch(std::move(c));
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP;
    ev.data.fd = c->fd;
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
      TLOG_WARN("http: epoll_ctl: {}", std::strerror(errno));
      return s_->Close(std::move(c), "error");
    }
    c->deadline = Clock::now() + s_->options_.header_timeout;
    deadlines_.emplace(c->deadline, c->fd);
    waiting_.emplace(c->fd, std::move(c));
  }

  std::unique_ptr<Conn> Remove(int fd) {
    auto it = waiting_.find(fd);
    if (it == waiting_.end()) return nullptr;
    std::unique_ptr<Conn> c = std::move(it->second);
    waiting_.erase(it);
    deadlines_.erase({c->deadline, fd});
    (void)epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    return c;
  }

  void OnReadable(int fd) {
    auto it = waiting_.find(fd);
    if (it == waiting_.end()) return;
    Conn& c = *it->second;
    const size_t before = c.buf.size();
    bool eof = false;
    char chunk[16 * 1024];
    for (;;) {
      const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      if (n > 0) {
        c.buf.append(chunk, static_cast<size_t>(n));
        if (c.buf.size() > s_->options_.max_header_bytes) break;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      eof = n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
      break;
    }
    if (HeadersComplete(c.buf, before)) return Dispatch(Remove(fd));
    if (c.buf.size() > s_->options_.max_header_bytes) {
      auto conn = Remove(fd);
      SendError(fd, ApiError{431,
                             fmt::format("the request headers are larger than {} bytes",
                                         s_->options_.max_header_bytes),
                             "invalid_request_error", "", "headers_too_large"});
      return s_->Close(std::move(conn), "headers_too_large");
    }
    if (eof) s_->Close(Remove(fd), "client_closed");
  }

  void Expire(Clock::time_point now) {
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto c = Remove(deadlines_.begin()->second);
      if (c->buf.empty() && !c->fresh) {
        s_->Close(std::move(c), "idle");
        continue;
      }
      SendError(c->fd, ApiError{408,
                                fmt::format("the request headers did not arrive within {} ms "
                                            "(--http-header-timeout-ms)",
                                            s_->options_.header_timeout.count()),
                                "invalid_request_error", "", "request_timeout"});
      s_->Close(std::move(c), "header_timeout");
    }
  }

  void Dispatch(std::unique_ptr<Conn> c) {
    ElasticThreadPool& pool =
        IsProbe(c->buf, s_->options_.probe_paths) ? s_->probe_pool_ : s_->pool_;
    Conn* raw = c.release();
    if (!pool.Submit([s = s_, raw] { s->Serve(std::unique_ptr<Conn>(raw)); })) {
      c.reset(raw);
      SendError(c->fd, ApiError{503, "the server has no thread to serve this request",
                                "server_error", "", "no_thread"});
      s_->Close(std::move(c), "no_thread");
    }
  }

  HttpServer* const s_;
  int listen_fd_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::unordered_map<int, std::unique_ptr<Conn>> waiting_;
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

Status HttpServer::Start() {
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
  ConnectionStream strm(c->fd, std::move(c->buf), options_.read_timeout, options_.write_timeout);
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
  CountClosed(reason);
  close(c->fd);
}

void HttpServer::CountClosed(const char* reason) {
  if (metrics_ != nullptr) metrics_->http_connections_closed(reason).Increment();
}

}  // namespace tandem::http
