#include "tandem/common/metrics_http.h"

#include <sys/socket.h>

#include <chrono>
#include <thread>

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

StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port, std::function<std::string()> render) {
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
