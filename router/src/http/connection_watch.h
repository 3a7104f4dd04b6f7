// ConnectionWatch: tells an HTTP handler that its client hung up while the response is still
// being computed (cpp-httplib only notices at the next failed write, which for a long prefill or
// a non-streaming request may be never).
//
// The handler's socket is the one HttpServer marked as served by this thread (ServingSocket),
// checked against the request's ports; elsewhere (a plain httplib::Server) it is found by its
// local and remote ports in /proc/self/fd. The handler runs while the server holds the
// connection open, so the descriptor is stable for its duration. It is polled for POLLRDHUP: the
// peer closed its side. A client that half-closes (shutdown(SHUT_WR)) while still reading is taken
// as gone too; HTTP clients do not do that.
//
// Thread safety: one watcher per handler, used by its thread.
#pragma once

#include <string>

namespace tandem::http {

// Marks `fd` as the socket this thread serves a request on, for its scope.
class ServingSocket {
 public:
  explicit ServingSocket(int fd);
  ~ServingSocket();
  ServingSocket(const ServingSocket&) = delete;
  ServingSocket& operator=(const ServingSocket&) = delete;
  // This thread's socket, or -1.
  static int Current();

 private:
  int previous_;
};

class ConnectionWatch {
 public:
  // Looks the connection up; a watch that found none (valid() false) never reports a hang-up.
  ConnectionWatch(const std::string& local_addr, int local_port, const std::string& remote_addr,
                  int remote_port);
  bool valid() const { return fd_ >= 0; }
  // True once the peer has closed the connection. Never blocks.
  bool PeerClosed() const;

 private:
  int fd_ = -1;
};

}  // namespace tandem::http
