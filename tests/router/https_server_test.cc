// HttpServer with a certificate (HTTPS) on loopback, certificates made at test time by
// tests/rpc/make_test_certs.sh: keep-alive, bodies both ways, streaming and pipelined requests
// through TLS; a plaintext request is answered 400 and closed, and the server goes on; a stalled
// handshake is closed by the header timeout; a key that does not match the certificate stops
// Start; slow request bodies hold no thread and past the body timeout get 408; an over-limit
// Content-Length gets 413 from the reactor. No timing
// assertions: every wait ends when what it waits for happens.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/ssl.h>

#include "../../router/src/http/http_server.h"
#include "../rpc/test_certs.h"
#include "raw_socket.h"

namespace tandem::http {
namespace {

using namespace std::chrono_literals;
using testing_http::Connect;
using testing_http::ReadToEnd;
using testing_http::WaitUntil;

class HttpsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    certs_ = new testing_tls::TestCerts("tandem-https-test");
    ASSERT_TRUE(certs_->ok()) << certs_->command();
  }
  static void TearDownTestSuite() {
    delete certs_;
    certs_ = nullptr;
  }
  static std::string Path(const std::string& name) { return certs_->Path(name); }

  static HttpServerOptions Tls() {
    HttpServerOptions o;
    o.tls_cert_file = Path("server.pem");
    o.tls_key_file = Path("server.key");
    return o;
  }

  void Start(HttpServerOptions o) {
    server_ = std::make_unique<HttpServer>(std::move(o), &metrics_);
    server_->Get("/hello", [](const httplib::Request&, httplib::Response& r) {
      r.set_content("hello", "text/plain");
    });
    server_->Get("/big", [](const httplib::Request&, httplib::Response& r) {
      r.set_content(std::string(2 << 20, 'x'), "text/plain");
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
  }

  std::unique_ptr<httplib::SSLClient> Client() {
    auto cli = std::make_unique<httplib::SSLClient>("127.0.0.1", server_->port());
    cli->set_ca_cert_path(Path("ca.pem").c_str());
    cli->enable_server_certificate_verification(true);
    cli->set_keep_alive(true);
    return cli;
  }

  double Closed(const std::string& reason) {
    return metrics_.http_connections_closed(reason).Value();
  }

  static inline testing_tls::TestCerts* certs_ = nullptr;
  Metrics metrics_{MetricRole::kRouter, "m"};
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpsServerTest, KeepAliveBodiesAndStreamingThroughTls) {
  Start(Tls());
  auto cli = Client();
  auto a = cli->Get("/hello");
  ASSERT_TRUE(a) << httplib::to_string(a.error());
  EXPECT_EQ(a->body, "hello");
  const std::string body(300 * 1024, 'b');
  auto echo = cli->Post("/echo", body, "text/plain");
  ASSERT_TRUE(echo) << httplib::to_string(echo.error());
  EXPECT_EQ(echo->body, body);
  auto big = cli->Get("/big");
  ASSERT_TRUE(big) << httplib::to_string(big.error());
  EXPECT_EQ(big->body.size(), size_t{2} << 20);
  auto stream = cli->Get("/stream");
  ASSERT_TRUE(stream) << httplib::to_string(stream.error());
  EXPECT_NE(stream->body.find("data: 2"), std::string::npos);
  // One connection carried them all (kept alive between requests).
  EXPECT_EQ(server_->open_connections(), 1);
  cli.reset();
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 0; }));
}

TEST_F(HttpsServerTest, PipelinedRequestsInOneTlsWrite) {
  Start(Tls());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  ASSERT_EQ(SSL_CTX_load_verify_locations(ctx, Path("ca.pem").c_str(), nullptr), 1);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  const int fd = Connect(server_->port());
  SSL* ssl = SSL_new(ctx);
  SSL_set_fd(ssl, fd);
  ASSERT_EQ(SSL_connect(ssl), 1);
  const std::string two =
      "GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
  ASSERT_EQ(SSL_write(ssl, two.data(), static_cast<int>(two.size())), static_cast<int>(two.size()));
  std::string got;
  char buf[4096];
  auto count = [&] {
    int n = 0;
    for (size_t p = got.find("hello"); p != std::string::npos; p = got.find("hello", p + 1)) ++n;
    return n;
  };
  while (count() < 2) {
    const int n = SSL_read(ssl, buf, sizeof(buf));
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  EXPECT_EQ(count(), 2) << got;
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  close(fd);
}

TEST_F(HttpsServerTest, PlaintextIsAnswered400AndTheServerGoesOn) {
  Start(Tls());
  for (int i = 0; i < 3; ++i) {
    const int fd = Connect(server_->port());
    const std::string req = "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n";
    ASSERT_EQ(send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
    const std::string answer = ReadToEnd(fd);
    close(fd);
    EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
    EXPECT_NE(answer.find("HTTPS"), std::string::npos) << answer;
  }
  EXPECT_EQ(Closed("plaintext_on_tls"), 3);
  auto res = Client()->Get("/hello");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->body, "hello");
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 0; }));
}

TEST_F(HttpsServerTest, AStalledHandshakeIsClosedByTheHeaderTimeout) {
  HttpServerOptions o = Tls();
  o.header_timeout = 200ms;
  Start(o);
  const int fd = Connect(server_->port());
  ASSERT_EQ(send(fd, "\x16\x03\x01", 3, MSG_NOSIGNAL), 3);  // a record header begun, no more
  EXPECT_EQ(ReadToEnd(fd), "");                             // closed without a (plaintext) byte
  close(fd);
  EXPECT_EQ(Closed("header_timeout"), 1);
  EXPECT_TRUE(WaitUntil([&] { return server_->open_connections() == 0; }));
}

// A raw TLS client (verifying the test CA), for requests written piece by piece.
class RawTls {
 public:
  RawTls(int port, const std::string& ca) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    EXPECT_EQ(SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr), 1);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    fd_ = Connect(port);
    ssl_ = SSL_new(ctx_);
    SSL_set_fd(ssl_, fd_);
    EXPECT_EQ(SSL_connect(ssl_), 1);
  }
  ~RawTls() {
    SSL_free(ssl_);
    SSL_CTX_free(ctx_);
    close(fd_);
  }
  void Write(const std::string& s) {
    ASSERT_EQ(SSL_write(ssl_, s.data(), static_cast<int>(s.size())), static_cast<int>(s.size()));
  }
  // Reads until `marker` arrived or the server closed (or the receive guard).
  std::string ReadUntil(const std::string& marker) {
    std::string got;
    char buf[4096];
    while (marker.empty() || got.find(marker) == std::string::npos) {
      const int n = SSL_read(ssl_, buf, sizeof(buf));
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    return got;
  }

 private:
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
};

// Slow request bodies over TLS hold no worker thread either (the reactor reads them through the
// connection's SSL object): with both threads' worth of slow bodies open, a normal POST is
// served. 100 Continue shows that the server has read each slow client's headers.
TEST_F(HttpsServerTest, SlowBodiesThroughTlsHoldNoThread) {
  HttpServerOptions o = Tls();
  o.max_threads = 2;
  o.read_timeout = 10min;
  o.body_timeout = 10min;
  Start(o);
  std::vector<std::unique_ptr<RawTls>> slow;
  for (int i = 0; i < 2; ++i) {
    slow.push_back(std::make_unique<RawTls>(server_->port(), Path("ca.pem")));
    slow.back()->Write(
        "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n");
    EXPECT_EQ(slow.back()->ReadUntil("\r\n\r\n"), "HTTP/1.1 100 Continue\r\n\r\n");
    slow.back()->Write("abc");
  }
  auto cli = Client();
  cli->set_read_timeout(60, 0);  // far less than the 10-minute read timeout of a worker
  auto res = cli->Post("/echo", "hello", "text/plain");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->body, "hello");
  slow[0]->Write("defgh");
  const std::string done = slow[0]->ReadUntil("abcdefgh");
  EXPECT_EQ(done.rfind("HTTP/1.1 200", 0), 0u) << done;
}

TEST_F(HttpsServerTest, ABodyPastTheBodyTimeoutGets408ThroughTls) {
  HttpServerOptions o = Tls();
  o.body_timeout = 200ms;
  Start(o);
  RawTls c(server_->port(), Path("ca.pem"));
  c.Write("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\nab");
  const std::string answer = c.ReadUntil("");
  EXPECT_EQ(answer.rfind("HTTP/1.1 408", 0), 0u) << answer;
  EXPECT_NE(answer.find("--http-body-timeout-ms"), std::string::npos) << answer;
  EXPECT_EQ(Closed("body_timeout"), 1);
}

// An over-limit Content-Length is answered 413 through TLS by the reactor, and closed; the body
// is never waited for (the body timeout is 10 minutes).
TEST_F(HttpsServerTest, OverLimitContentLengthIs413ThroughTlsAndClosed) {
  HttpServerOptions o = Tls();
  o.max_body_bytes = 100;
  o.body_timeout = 10min;
  o.read_timeout = 10min;
  Start(o);
  RawTls c(server_->port(), Path("ca.pem"));
  c.Write("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n");
  const std::string answer = c.ReadUntil("");  // until the server closes
  EXPECT_EQ(answer.rfind("HTTP/1.1 413", 0), 0u) << answer;
  EXPECT_NE(answer.find("Connection: close\r\n"), std::string::npos) << answer;
  EXPECT_NE(answer.find("--max-body-bytes"), std::string::npos) << answer;
  EXPECT_EQ(Closed("body_too_large"), 1);
  EXPECT_EQ(server_->threads(), 0);
}

TEST_F(HttpsServerTest, AKeyThatIsNotTheCertificatesStopsStart) {
  HttpServerOptions o = Tls();
  o.tls_key_file = Path("client.key");
  HttpServer s(o, nullptr);
  Status st = s.Start();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find(Path("client.key")), std::string::npos) << st.message();
  o.tls_cert_file = Path("missing.pem");
  HttpServer t(o, nullptr);
  Status missing = t.Start();
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find(Path("missing.pem")), std::string::npos) << missing.message();
}

}  // namespace
}  // namespace tandem::http
