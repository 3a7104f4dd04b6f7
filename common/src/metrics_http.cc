#include "tandem/common/metrics_http.h"

#include <sys/socket.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

namespace tandem {

struct MetricsHttpServer::Impl {
  httplib::Server server;
  std::thread thread;
};

MetricsHttpServer::MetricsHttpServer(std::unique_ptr<Impl> impl, std::string url)
    : impl_(std::move(impl)), url_(std::move(url)) {}

MetricsHttpServer::~MetricsHttpServer() {
  impl_->server.stop();
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
    const std::string& host, int port, std::function<std::string()> render, HealthFn health) {
  auto impl = std::make_unique<Impl>();
  impl->server.new_task_queue = [] { return new httplib::ThreadPool(2); };
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second process bind a
  // port that is already serving.
  impl->server.set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl->server.Get("/metrics",
                   [render = std::move(render)](const httplib::Request&, httplib::Response& res) {
                     res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
                   });
  if (health) {
    impl->server.Get(
        "/health", [health = std::move(health)](const httplib::Request&, httplib::Response& res) {
          const std::string state = health();
          res.status = state == "ok" ? 200 : 503;
          res.set_content("{\"status\":" + JsonString(state) + "}", "application/json");
        });
  }
  const int bound = port == 0 ? impl->server.bind_to_any_port(host)
                              : (impl->server.bind_to_port(host, port) ? port : -1);
  if (bound <= 0) {
    return UnavailableError("cannot serve metrics on {}:{}: address in use or invalid", host, port);
  }
  impl->thread = std::thread([s = &impl->server] { s->listen_after_bind(); });
  // stop() before the loop runs would be lost (httplib): return only once it is running.
  for (int i = 0; i < 5000 && !impl->server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<MetricsHttpServer>(
      new MetricsHttpServer(std::move(impl), fmt::format("http://{}:{}/metrics", host, bound)));
}

}  // namespace tandem
