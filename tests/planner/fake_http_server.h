// An httplib::Server on 127.0.0.1 (any free port) run on its own thread, for tests that stand in
// for Prometheus or the Kubernetes API server. Handlers are set before Start.
#pragma once

#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

namespace tandem::planner {

class FakeHttpServer {
 public:
  httplib::Server& server() { return server_; }

  // Binds, starts serving, and returns once the server accepts connections.
  void Start() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // httplib 0.11 has no wait_until_ready: the flag it sets once its accept loop runs.
    while (!server_.is_running()) std::this_thread::yield();
  }
  ~FakeHttpServer() { Stop(); }
  void Stop() {
    if (thread_.joinable()) {
      server_.stop();
      thread_.join();
    }
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace tandem::planner
