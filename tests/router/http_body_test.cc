// HttpServer reads request bodies in its reactor, without a thread (http_server.h): slow bodies
// do not take the worker threads from other requests; a body not complete within body_timeout
// is answered 408 and closed; Content-Length and chunked bodies split over several writes are
// served whole; 100 Continue is sent once; an over-limit Content-Length is refused (413) by the
// reactor, without a thread and without waiting for its bytes; a body whose client ended its
// side gets 400.
//
// No timing assertions: every wait ends when what it waits for happens (kGuard bounds a hang).
// The worker read timeout is 10 minutes in the slow-body tests, so that a server that holds a
// thread per slow body fails them by their guard, never by a race.
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>

#include "../../router/src/http/http_server.h"
#include "raw_socket.h"

namespace tandem::http {
namespace {

using namespace std::chrono_literals;
using testing_http::Connect;
using testing_http::ReadToEnd;
using testing_http::ReadUntil;
using testing_http::Send;
using testing_http::WaitUntil;

constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";

class HttpBodyTest : public ::testing::Test {
 protected:
  void Start(HttpServerOptions o) {
    server_ = std::make_unique<HttpServer>(std::move(o), &metrics_);
    server_->Post("/echo", [](const httplib::Request& q, httplib::Response& r) {
      r.set_content(q.body, "text/plain");
    });
    server_->set_payload_max_length(server_max_body_);
    ASSERT_TRUE(server_->Start().ok());
  }

  // Options where a slow body would hold a worker thread for 10 minutes.
  static HttpServerOptions TwoThreads() {
    HttpServerOptions o;
    o.max_threads = 2;
    o.read_timeout = 10min;
    o.body_timeout = 10min;
    return o;
  }

  // Clients first: a worker thread still reading a slow body (the failure these tests look
  // for) ends when its client goes, and Stop waits for it.
  void TearDown() override {
    for (int fd : fds_) close(fd);
    if (server_) server_->Stop();
  }

  int Open() {
    fds_.push_back(Connect(server_->port()));
    return fds_.back();
  }

  double Closed(const std::string& reason) {
    return metrics_.http_connections_closed(reason).Value();
  }

  // True when nothing has come from the server on `fd` and it has not closed it.
  static bool Silent(int fd) {
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }

  static std::string Post(const std::string& body) {
    return "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: " + std::to_string(body.size()) +
           "\r\n\r\n" + body;
  }

  Metrics metrics_{MetricRole::kRouter, "m"};
  std::unique_ptr<HttpServer> server_;
  std::vector<int> fds_;
  size_t server_max_body_ = 1 << 20;
};

// The finding of issue 14: with every worker thread reading a slow body, nothing else was
// served until a body read timed out. 100 Continue orders the events: once a slow client has
// it, the server has read its headers (before the change, a worker thread sent it and then
// waited for the body).
TEST_F(HttpBodyTest, SlowBodiesHoldNoThread) {
  Start(TwoThreads());
  std::vector<int> slow;
  for (int i = 0; i < 2; ++i) {
    slow.push_back(Open());
    Send(slow.back(),
         "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n");
  }
  for (int fd : slow) {
    ASSERT_EQ(ReadUntil(fd, kContinue), kContinue);
    Send(fd, "abc");
  }
  // A normal request is served while the slow bodies are still coming (within 60 s: far less
  // than the 10-minute read timeout a worker would wait for a slow body).
  const int normal = Open();
  const timeval guard{60, 0};
  setsockopt(normal, SOL_SOCKET, SO_RCVTIMEO, &guard, sizeof(guard));
  Send(normal, Post("hello"));
  const std::string answer = ReadUntil(normal, "hello");
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  for (int fd : slow) EXPECT_TRUE(Silent(fd)) << "a slow body was answered or closed";
  EXPECT_EQ(server_->open_connections(), 3);
  // The rest of a slow body: served whole, and 100 Continue came only once.
  Send(slow[0], std::string(997, 'x'));
  const std::string done = ReadUntil(slow[0], std::string(997, 'x'));
  EXPECT_NE(done.find("HTTP/1.1 200"), std::string::npos) << done;
  EXPECT_NE(done.find("abc" + std::string(997, 'x')), std::string::npos) << done;
  EXPECT_EQ(done.find("100 Continue"), std::string::npos) << done;
}

// The same without Expect: the slow headers reach the server before the normal connection is
// accepted (each slow client's headers are in the server's socket once it counts the
// connection open).
TEST_F(HttpBodyTest, SlowBodiesWithoutExpectHoldNoThread) {
  Start(TwoThreads());
  for (int i = 0; i < 2; ++i) {
    Send(Open(), "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nab");
  }
  ASSERT_TRUE(WaitUntil([&] { return server_->open_connections() == 2; }));
  const int normal = Open();
  Send(normal, Post("hello"));
  const std::string answer = ReadUntil(normal, "hello");
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  EXPECT_TRUE(Silent(fds_[0]));
  EXPECT_TRUE(Silent(fds_[1]));
}

TEST_F(HttpBodyTest, ABodyPastTheBodyTimeoutGets408AndIsClosed) {
  HttpServerOptions o;
  o.read_timeout = 10min;
  o.body_timeout = 200ms;
  Start(o);
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
  const std::string answer = ReadToEnd(fd);
  EXPECT_NE(answer.find("HTTP/1.1 408"), std::string::npos) << answer;
  EXPECT_NE(answer.find("request_timeout"), std::string::npos) << answer;
  EXPECT_NE(answer.find("--http-body-timeout-ms"), std::string::npos) << answer;
  EXPECT_EQ(Closed("body_timeout"), 1);
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 0; }));
}

TEST_F(HttpBodyTest, ContentLengthBodyInSeveralWrites) {
  Start(TwoThreads());
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n");
  Send(fd, "0123");
  EXPECT_TRUE(Silent(fd));  // not answered before the body is complete
  Send(fd, "456");
  Send(fd, "789");
  const std::string answer = ReadUntil(fd, "0123456789");
  EXPECT_NE(answer.find("HTTP/1.1 200"), std::string::npos) << answer;
  // The connection stays in step: the next request on it is served.
  Send(fd, Post("next"));
  EXPECT_NE(ReadUntil(fd, "next").find("HTTP/1.1 200"), std::string::npos);
}

TEST_F(HttpBodyTest, ChunkedBodyInSeveralWrites) {
  Start(TwoThreads());
  const int fd = Open();
  // 100 Continue first: the reactor has the headers, the chunks come in writes of their own.
  Send(fd,
       "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
       "Transfer-Encoding: chunked\r\n\r\n");
  ASSERT_EQ(ReadUntil(fd, kContinue), kContinue);
  Send(fd, "5\r\nhel");
  Send(fd, "lo\r\n");
  Send(fd, "6;ext=1\r\n wor");
  EXPECT_TRUE(Silent(fd));
  Send(fd, "ld\r\n0\r\n");
  EXPECT_TRUE(Silent(fd));
  // The end of the body and a pipelined request in one write.
  Send(fd, "\r\n" + Post("next"));
  const std::string answer = ReadUntil(fd, "next");
  EXPECT_NE(answer.find("hello world"), std::string::npos) << answer;
  EXPECT_EQ(answer.find("HTTP/1.1 200"), 0u) << answer;
  EXPECT_NE(answer.find("HTTP/1.1 200", 1), std::string::npos) << answer;
}

// Over the bound the reactor does not wait for the body: it answers 413 itself (the body
// timeout is 10 minutes; what the client sent of the body is dropped).
TEST_F(HttpBodyTest, OverTheBodyLimitIs413WithoutWaitingForTheBody) {
  server_max_body_ = 100;
  HttpServerOptions o;
  o.max_body_bytes = 100;
  o.read_timeout = 1s;
  o.body_timeout = 10min;
  Start(o);
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc");
  const std::string answer = ReadUntil(fd, "\r\n\r\n");
  EXPECT_NE(answer.find("HTTP/1.1 413"), std::string::npos) << answer;
}

// Issue 14: an over-limit Content-Length is answered by the reactor, not a worker thread (whose
// cpp-httplib would read and drop the declared bytes first, for up to its 10-minute read
// timeout): with both worker threads held by slow bodies, a client that declares 1000 bytes and
// sends none gets 413 naming the bound and its flag, and the connection is closed.
TEST_F(HttpBodyTest, OverLimitContentLengthIs413FromTheReactorWhileEveryThreadIsBusy) {
  server_max_body_ = 100;
  HttpServerOptions o = TwoThreads();
  o.max_body_bytes = 100;
  o.max_buffered_body_bytes = 10;  // the slow bodies below go to worker threads
  Start(o);
  for (int i = 0; i < 2; ++i) {
    Send(Open(),
         "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n" + std::string(20, 'a'));
  }
  ASSERT_TRUE(WaitUntil([&] { return server_->threads() == 2; }));  // both reading a body
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
  const std::string answer = ReadToEnd(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
  EXPECT_NE(answer.find("Connection: close\r\n"), std::string::npos) << answer;
  EXPECT_NE(answer.find("request_too_large"), std::string::npos) << answer;
  EXPECT_NE(answer.find("larger than 100 bytes"), std::string::npos) << answer;
  EXPECT_NE(answer.find("--max-body-bytes"), std::string::npos) << answer;
  char c;
  EXPECT_EQ(recv(fd, &c, 1, 0), 0) << "not closed";  // EOF, not the guard's timeout
  EXPECT_EQ(Closed("body_too_large"), 1);
  EXPECT_EQ(server_->threads(), 2);
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 2; }));
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(Silent(fds_[i])) << "a slow body was answered";
}

// A body a handler answers without reading (waits_for_body false) is not waited for: the answer
// comes while the client is still sending.
TEST_F(HttpBodyTest, ABodyAHandlerDoesNotReadIsNotWaitedFor) {
  HttpServerOptions o = TwoThreads();
  o.waits_for_body = [](const RequestHead& h) { return h.path != "/refused"; };
  server_ = std::make_unique<HttpServer>(std::move(o), &metrics_);
  server_->set_pre_routing_handler([](const httplib::Request& q, httplib::Response& r) {
    if (q.path != "/refused") return httplib::Server::HandlerResponse::Unhandled;
    r.status = 404;
    r.set_content("refused", "text/plain");
    return httplib::Server::HandlerResponse::Handled;
  });
  ASSERT_TRUE(server_->Start().ok());
  const int fd = Open();
  Send(fd, "POST /refused?x=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nab");
  const std::string answer = ReadUntil(fd, "refused");
  EXPECT_EQ(answer.rfind("HTTP/1.1 404", 0), 0u) << answer;
}

// Past max_buffered_body_bytes (over all connections) a body goes to a worker thread, which
// reads the rest as before.
TEST_F(HttpBodyTest, PastTheBufferedBodiesBoundAWorkerReadsTheRest) {
  HttpServerOptions o = TwoThreads();
  o.max_buffered_body_bytes = 10;
  Start(o);
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n" + std::string(20, 'a'));
  ASSERT_TRUE(WaitUntil([&] { return server_->threads() == 1; }));  // a worker reads the body
  Send(fd, std::string(10, 'b'));
  const std::string answer = ReadUntil(fd, std::string(20, 'a') + std::string(10, 'b'));
  EXPECT_EQ(answer.rfind("HTTP/1.1 200", 0), 0u) << answer;
}

TEST_F(HttpBodyTest, ATruncatedBodyWhoseClientEndedItsSideGets400) {
  Start(TwoThreads());
  const int fd = Open();
  Send(fd, "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
  ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
  const std::string answer = ReadToEnd(fd);
  EXPECT_NE(answer.find("HTTP/1.1 400"), std::string::npos) << answer;
}

}  // namespace
}  // namespace tandem::http
