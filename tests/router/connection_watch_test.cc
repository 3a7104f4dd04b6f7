// ConnectionWatch against a real cpp-httplib server and a raw client socket on loopback.
#include "../../router/src/http/connection_watch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

namespace tandem::http {
namespace {

using namespace std::chrono_literals;

// Hang guard: the waits below end as soon as what they wait for happens.
constexpr auto kGuard = std::chrono::seconds(120);

struct Seen {
  bool valid = false;
  bool closed = false;
};

// Serves GET /wait: the handler watches its connection for `watch_for` (or until it sees the
// client gone) and reports what it saw.
class WatchServer {
 public:
  explicit WatchServer(std::chrono::milliseconds watch_for) {
    server_.Get("/wait", [this, watch_for](const httplib::Request& q, httplib::Response& r) {
      ConnectionWatch w(q.local_addr, q.local_port, q.remote_addr, q.remote_port);
      watching_.set_value();
      Seen s;
      s.valid = w.valid();
      const auto end = std::chrono::steady_clock::now() + watch_for;
      while (!s.closed && std::chrono::steady_clock::now() < end) {
        s.closed = w.PeerClosed();
        std::this_thread::sleep_for(10ms);
      }
      seen_.set_value(s);
      r.set_content("late", "text/plain");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~WatchServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }
  std::future<Seen> seen() { return seen_.get_future(); }
  // Ready once the handler runs and watches its connection.
  std::future<void> watching() { return watching_.get_future(); }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::promise<Seen> seen_;
  std::promise<void> watching_;
};

int Connect(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  return fd;
}

TEST(ConnectionWatchTest, SeesTheClientHangUpWhileTheHandlerRuns) {
  WatchServer s(kGuard);  // watches until it sees the hang-up
  auto seen = s.seen();
  auto watching = s.watching();
  int fd = Connect(s.port());
  const std::string req = "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  ASSERT_EQ(watching.wait_for(kGuard), std::future_status::ready);  // the handler runs
  close(fd);
  ASSERT_EQ(seen.wait_for(kGuard), std::future_status::ready);
  Seen got = seen.get();
  EXPECT_TRUE(got.valid) << "the handler's socket was not found";
  EXPECT_TRUE(got.closed) << "the hang-up was not seen";
}

TEST(ConnectionWatchTest, AConnectedClientIsNotReportedGone) {
  WatchServer s(5s);  // watches a connected client for 5 s
  auto seen = s.seen();
  int fd = Connect(s.port());
  const std::string req = "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  ASSERT_EQ(seen.wait_for(kGuard), std::future_status::ready);  // the handler gave up after 5 s
  Seen got = seen.get();
  EXPECT_TRUE(got.valid);
  EXPECT_FALSE(got.closed);
  close(fd);
}

TEST(ConnectionWatchTest, UnknownConnectionIsInvalidAndNeverClosed) {
  ConnectionWatch w("127.0.0.1", 1, "127.0.0.1", 2);
  EXPECT_FALSE(w.valid());
  EXPECT_FALSE(w.PeerClosed());
}

}  // namespace
}  // namespace tandem::http
