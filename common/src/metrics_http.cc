#include "tandem/common/metrics_http.h"

#include <sys/socket.h>

#include <csignal>

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

namespace tandem {

struct MetricsHttpServer::Impl {
  std::unique_ptr<httplib::Server> server;  // an httplib::SSLServer with TLS
  std::thread thread;
};

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Impl> impl, std::string url)
    : impl_(std::move(impl)), url_(std::move(url)) {}

MetricsHttpServer::~MetricsHttpServer() {
  impl_->server->stop();
  impl_->thread.join();
}

namespace {

// `s` as a JSON string literal (quotes, backslashes and control characters escaped).
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<int>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> render, HealthFn health,
    const MetricsTls& tls) {
  auto impl = std::make_unique<Impl>();
  if (tls.enabled()) {
    if (tls.cert_file.empty() || tls.key_file.empty()) {
      return InvalidArgumentError("metrics over HTTPS need both a certificate and its key");
    }
    auto ssl = std::make_unique<httplib::SSLServer>(tls.cert_file.c_str(), tls.key_file.c_str());
    if (!ssl->is_valid()) {
      return InvalidArgumentError(
          "metrics over HTTPS: cannot load the certificate {} with the key {} (missing, not PEM, "
          "or not each other's)",
          tls.cert_file, tls.key_file);
    }
    // SSL_write writes with write(2), which raises SIGPIPE when a scraper has gone.
    std::signal(SIGPIPE, SIG_IGN);
    impl->server = std::move(ssl);
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  httplib::Server& server = *impl->server;
  server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second process bind a
  // port that is already serving.
  server.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  server.Get("/metrics",
             [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
               res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
             });
  if (health) {
    server.Get("/health",
               [health = std::move(health)](const httplib::Request&, httplib::Response& res) {
                 const std::string state = health();
                 res.status = state == "ok" ? 200 : 503;
                 res.set_content("{\"status\":" + JsonString(state) + "}", "application/json");
               });
  }
  const int bound =
      port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return UnavailableError("cannot serve metrics on {}:{}: address in use or invalid", host, port);
  }
  impl->thread = std::thread([s = &server] { s->listen_after_bind(); });
  // stop() before the loop runs would be lost (httplib): return only once it is running.
  for (int i = 0; i < 5000 && !server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer(
      std::move(impl),
      fmt::format("{}://{}:{}/metrics", tls.enabled() ? "https" : "http", host, bound)));
}

}  // namespace tandem
