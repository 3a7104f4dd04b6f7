// HttpServer (the router's bounded HTTP listener) on loopback with raw client sockets: the
// connection cap (503), the header timeout (408), /health while every worker thread is busy,
// keep-alive, pipelining and streaming through cpp-httplib, threads only for work.
//
// No timing assertions: every wait ends when what it waits for happens (kGuard bounds a hang).
#include "../../router/src/http/http_server.h"

#include "../../router/src/http/connection_watch.h"
#include "raw_socket.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

namespace tandem::http {
namespace {

using namespace std::chrono_literals;
using testing_http::Connect;
using testing_http::Get;
using testing_http::kGuard;
using testing_http::ReadToEnd;
using testing_http::ReadUntil;
using testing_http::Send;
using testing_http::WaitUntil;

class HttpServerTest : public ::testing::Test {
 protected:
  void Start(HttpServerOptions o) {
    server_ = std::make_unique<HttpServer>(std::move(o), &metrics_);
    server_->Get("/health", [](const httplib::Request&, httplib::Response& r) {
      r.set_content("ok", "text/plain");
    });
    server_->Get("/hello", [](const httplib::Request&, httplib::Response& r) {
      r.set_content("hello", "text/plain");
    });
    server_->Get("/block", [this](const httplib::Request&, httplib::Response& r) {
      entered_.set_value();
      release_.wait();
      r.set_content("released", "text/plain");
    });
    server_->Get("/stream", [](const httplib::Request&, httplib::Response& r) {
      r.set_chunked_content_provider("text/event-stream", [](size_t i, httplib::DataSink& sink) {
        if (i >= 3 * 8) {
          sink.done();
          return true;
        }
        const std::string ev = "data: " + std::to_string(i / 8) + "\n\n";
        return sink.write(ev.data(), ev.size());
      });
    });
    server_->Post("/echo", [](const httplib::Request& q, httplib::Response& r) {
      r.set_content(q.body, "text/plain");
    });
    ASSERT_TRUE(server_->Start().ok());
  }

  void TearDown() override {
    if (server_) server_->Stop();
    for (int fd : fds_) close(fd);
  }

  int Open() {
    fds_.push_back(Connect(server_->port()));
    return fds_.back();
  }

  double Closed(const std::string& reason) {
    return metrics_.http_connections_closed(reason).Value();
  }

  Metrics metrics_{MetricRole::kRouter, "m"};
  std::unique_ptr<HttpServer> server_;
  std::vector<int> fds_;
  std::promise<void> entered_;
  std::promise<void> release_promise_;
  std::shared_future<void> release_ = release_promise_.get_future().share();
};

TEST_F(HttpServerTest, KeepAlivePipeliningAndBodies) {
  HttpServerOptions o;
  Start(o);
  const int fd = Open();
  Send(fd, Get("/hello"));
  EXPECT_NE(ReadUntil(fd, "hello").find("HTTP/1.1 200"), std::string::npos);
  // The same connection again, then two pipelined requests in one write.
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde");
  EXPECT_NE(ReadUntil(fd, "abcde").find("200"), std::string::npos);
  Send(fd, Get("/hello") + Get("/health"));
  const std::string two = ReadUntil(fd, "\r\n\r\nok");
  EXPECT_NE(two.find("hello"), std::string::npos) << two;
  EXPECT_NE(two.find("\r\n\r\nok"), std::string::npos) << two;
  EXPECT_EQ(server_->open_connections(), 1);
}

TEST_F(HttpServerTest, StreamsChunkedResponses) {
  Start(HttpServerOptions{});
  httplib::Client cli("127.0.0.1", server_->port());
  auto res = cli.Get("/stream");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
}

TEST_F(HttpServerTest, OverTheCapIsRefusedWith503NamingTheLimit) {
  HttpServerOptions o;
  o.max_connections = 3;
  Start(o);
  for (int i = 0; i < 3; ++i) Open();
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 3; }));
  const int extra = Open();
  Send(extra, Get("/hello"));
  const std::string answer = ReadToEnd(extra);
  EXPECT_NE(answer.find("HTTP/1.1 503"), std::string::npos) << answer;
  EXPECT_NE(answer.find("3 connections open"), std::string::npos) << answer;
  EXPECT_NE(answer.find("too_many_connections"), std::string::npos) << answer;
  EXPECT_EQ(Closed("over_limit"), 1);
  // Closing one makes room again.
  close(fds_[0]);
  fds_[0] = -1;
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 2; }));
  const int again = Open();
  Send(again, Get("/hello"));
  EXPECT_NE(ReadUntil(again, "hello").find("200"), std::string::npos);
}

TEST_F(HttpServerTest, OverThePerAddressCapIsRefusedWith503NamingTheAddress) {
  HttpServerOptions o;
  o.max_connections_per_address = 2;
  Start(o);
  Open();
  Open();
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 2; }));
  const int extra = Open();
  Send(extra, Get("/hello"));
  const std::string answer = ReadToEnd(extra);
  EXPECT_NE(answer.find("HTTP/1.1 503"), std::string::npos) << answer;
  EXPECT_NE(answer.find("2 connections from 127.0.0.1"), std::string::npos) << answer;
  EXPECT_NE(answer.find("--http-max-connections-per-address"), std::string::npos) << answer;
  EXPECT_EQ(Closed("over_address_limit"), 1);
  // Another client address is served meanwhile.
  fds_.push_back(Connect(server_->port(), "127.0.0.2"));
  Send(fds_.back(), Get("/hello"));
  EXPECT_NE(ReadUntil(fds_.back(), "hello").find("200"), std::string::npos);
  // Closing one of the first client's makes room for it again.
  close(fds_[0]);
  fds_[0] = -1;
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 2; }));
  const int again = Open();
  Send(again, Get("/hello"));
  EXPECT_NE(ReadUntil(again, "hello").find("200"), std::string::npos);
  EXPECT_EQ(Closed("over_address_limit"), 1);
}

TEST_F(HttpServerTest, HeadersNotCompleteInTimeAre408) {
  HttpServerOptions o;
  o.header_timeout = 200ms;
  Start(o);
  const int slow = Open();
  Send(slow, "GET /hello HTTP/1.1\r\nHost: t\r\n");  // never the blank line
  const std::string answer = ReadToEnd(slow);
  EXPECT_NE(answer.find("HTTP/1.1 408"), std::string::npos) << answer;
  EXPECT_NE(answer.find("request_timeout"), std::string::npos) << answer;
  EXPECT_EQ(Closed("header_timeout"), 1);
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 0; }));
}

TEST_F(HttpServerTest, OversizedHeadersAre431) {
  HttpServerOptions o;
  o.max_header_bytes = 1024;
  Start(o);
  const int fd = Open();
  Send(fd, "GET /hello HTTP/1.1\r\nX-Big: " + std::string(4096, 'a'));
  EXPECT_NE(ReadToEnd(fd).find("HTTP/1.1 431"), std::string::npos);
}

TEST_F(HttpServerTest, HealthAnswersWhileEveryWorkerIsBusyAndIdleConnectionsHoldNoThread) {
  HttpServerOptions o;
  o.max_threads = 1;
  Start(o);
  for (int i = 0; i < 100; ++i) Open();  // idle: never send
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 100; }));
  EXPECT_EQ(server_->threads(), 0);
  const int busy = Open();
  Send(busy, Get("/block"));
  entered_.get_future().wait();
  // The only worker thread is held; the probe threads still answer.
  const int probe = Open();
  Send(probe, Get("/health"));
  EXPECT_NE(ReadUntil(probe, "ok").find("200"), std::string::npos);
  EXPECT_LE(server_->threads(), 1 + o.probe_threads);
  release_promise_.set_value();
  EXPECT_NE(ReadUntil(busy, "released").find("200"), std::string::npos);
}

TEST_F(HttpServerTest, IdleThreadsEnd) {
  HttpServerOptions o;
  o.thread_idle = 20ms;
  Start(o);
  const int fd = Open();
  Send(fd, Get("/hello"));
  EXPECT_NE(ReadUntil(fd, "hello").find("200"), std::string::npos);
  EXPECT_TRUE(WaitUntil([&] { return server_->threads() == 0; }));
}

TEST_F(HttpServerTest, StopClosesWaitingConnections) {
  Start(HttpServerOptions{});
  const int fd = Open();
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 1; }));
  server_->Stop();
  EXPECT_EQ(ReadToEnd(fd), "");
  EXPECT_EQ(server_->open_connections(), 0);
  EXPECT_EQ(Closed("shutdown"), 1);
}

TEST_F(HttpServerTest, AHandlerWatchesTheSocketItServesAndSeesTheClientHangUp) {
  Start(HttpServerOptions{});
  std::promise<bool> marked;
  std::promise<bool> gone;
  server_->Get("/watch", [&](const httplib::Request& q, httplib::Response& r) {
    // The server marks the socket it serves on: no /proc/self/fd scan.
    const int serving = ServingSocket::Current();
    ConnectionWatch w(q.local_addr, q.local_port, q.remote_addr, q.remote_port);
    marked.set_value(serving >= 0 && w.valid());
    gone.set_value(WaitUntil([&] { return w.PeerClosed(); }));
    r.set_content("late", "text/plain");
  });
  const int fd = Connect(server_->port());
  Send(fd, Get("/watch"));
  auto m = marked.get_future();
  ASSERT_EQ(m.wait_for(kGuard), std::future_status::ready);
  EXPECT_TRUE(m.get()) << "the handler's socket was not marked or not watched";
  close(fd);
  auto g = gone.get_future();
  ASSERT_EQ(g.wait_for(kGuard), std::future_status::ready);
  EXPECT_TRUE(g.get()) << "the hang-up was not seen";
  EXPECT_EQ(ServingSocket::Current(), -1);  // this (test) thread serves nothing
}

}  // namespace
}  // namespace tandem::http
