// Test harness: a Tandem deployment as separate processes on loopback, the way production runs
// it — one tandem-router (or several replicas, SetRouters), then N tandem-prefill and M
// tandem-decode workers that register with it (--router, every replica) and heartbeat. Every
// process serves /metrics; the harness scrapes them. Every wait is bounded; the destructor kills
// whatever is still running.
#pragma once

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <httplib.h>

#include "../router/serve_harness.h"

namespace tandem::testing {

struct ClusterProcess {
  std::string role;               // "router", "prefill", "decode"
  std::vector<std::string> argv;  // how it was started (Restart starts it again)
  pid_t pid = -1;
  int out_fd = -1;
  std::string grpc;         // host:port
  std::string metrics_url;  // http://host:port/metrics
};

// Reads `p`'s stdout until its "<role> grpc" line; records the metrics URL on the way.
inline bool ReadEndpoints(ClusterProcess* p, std::chrono::steady_clock::time_point deadline) {
  std::string buf;
  while (std::chrono::steady_clock::now() < deadline) {
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      const std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      const std::string grpc = p->role + " grpc ", metrics = p->role + " metrics ";
      if (line.rfind(metrics, 0) == 0) p->metrics_url = line.substr(metrics.size());
      if (line.rfind(grpc, 0) == 0) {
        p->grpc = line.substr(grpc.size());
        return true;
      }
    }
    pollfd pfd{p->out_fd, POLLIN, 0};
    if (poll(&pfd, 1, 100) <= 0) continue;
    char chunk[512];
    const ssize_t n = read(p->out_fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
  }
  return false;
}

// GET url → body, nullopt when it cannot be fetched.
inline std::optional<std::string> HttpGet(const std::string& url) {
  const std::string rest = url.substr(std::string("http://").size());
  const size_t slash = rest.find('/');
  httplib::Client cli("http://" + rest.substr(0, slash));
  // Hang guards only: a scrape answers in milliseconds, even on a loaded machine.
  cli.set_connection_timeout(30);
  cli.set_read_timeout(60);
  auto res = cli.Get(rest.substr(slash));
  if (!res || res->status != 200) return std::nullopt;
  return res->body;
}

// The value of the first series of `metric` (with `label_filter` inside its braces, e.g.
// kind="decode") in a Prometheus text exposition; nullopt when absent.
inline std::optional<double> MetricValue(const std::string& exposition, const std::string& metric,
                                         const std::string& label_filter = "") {
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(metric + "{", 0) != 0) continue;
    if (!label_filter.empty() && line.find(label_filter) == std::string::npos) continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return std::nullopt;
}

class Cluster {
 public:
  Cluster() = default;
  ~Cluster() {
    for (auto& p : procs_) Kill(&p);
  }
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Starts the router (with `router_flags`) and the workers (decode workers with `decode_flags`);
  // true once every process printed its endpoints (workers print theirs after the router
  // accepted their registration). `timeout` only guards against a hang: Start returns as soon
  // as the last endpoint line is read.
  bool Start(int num_prefill, int num_decode, const std::vector<std::string>& router_flags = {},
             const std::vector<std::string>& decode_flags = {},
             std::chrono::seconds timeout = std::chrono::seconds(600)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::vector<std::string> router = {BinDir() + "/tandem-router",
                                       "--model",
                                       ModelDir(),
                                       "--port",
                                       "0",
                                       "--metrics-port",
                                       "0",
                                       "--heartbeat-ms",
                                       "200",
                                       "--log-level",
                                       "warn"};
    // A test's own --port replaces the default (an option is taken once): a router restarted
    // with Restart() then listens where its workers look for it.
    if (std::find(router_flags.begin(), router_flags.end(), "--port") != router_flags.end()) {
      auto port = std::find(router.begin(), router.end(), "--port");
      router.erase(port, port + 2);
    }
    router.insert(router.end(), router_flags.begin(), router_flags.end());
    router_addr_.clear();
    for (int i = 0; i < num_routers_; ++i) {
      std::vector<std::string> argv = router;
      if (!router_ports_.empty()) {
        auto port = std::find(argv.begin(), argv.end(), "--port");
        *(port + 1) = std::to_string(router_ports_[static_cast<size_t>(i)]);
      }
      if (!Spawn("router", argv) || !ReadEndpoints(&procs_.back(), deadline)) return false;
      router_addr_ += (i > 0 ? "," : "") + procs_.back().grpc;
    }
    decode_flags_ = decode_flags;
    for (int i = 0; i < num_prefill; ++i) {
      if (!Spawn("prefill", WorkerArgv("prefill", i))) return false;
    }
    for (int i = 0; i < num_decode; ++i) {
      if (!Spawn("decode", WorkerArgv("decode", i))) return false;
    }
    for (auto& p : procs_) {
      if (p.role != "router" && !ReadEndpoints(&p, deadline)) return false;
    }
    return true;
  }

  // Starts one more worker ("prefill" or "decode", worker id "<role>-<index>") after Start, with
  // `extra` flags after the role's own; the new process, or nullptr when it did not register
  // within `timeout` (a hang guard).
  ClusterProcess* AddWorker(const std::string& role, int index,
                            const std::vector<std::string>& extra = {},
                            std::chrono::seconds timeout = std::chrono::seconds(600)) {
    std::vector<std::string> argv = WorkerArgv(role, index);
    argv.insert(argv.end(), extra.begin(), extra.end());
    if (!Spawn(role, argv)) return nullptr;
    ClusterProcess* p = &procs_.back();
    return ReadEndpoints(p, std::chrono::steady_clock::now() + timeout) ? p : nullptr;
  }

  // Starts a killed process again with its own arguments (same worker id, new ports); true
  // once it registered again. `timeout` only guards against a hang.
  static bool Restart(ClusterProcess* p, std::chrono::seconds timeout = std::chrono::seconds(600)) {
    Kill(p);
    p->pid = internal::SpawnWithPipe(p->argv, &p->out_fd);
    if (p->pid < 0) return false;
    return ReadEndpoints(p, std::chrono::steady_clock::now() + timeout);
  }

  // Before Start: `n` router replicas with the same flags instead of one; every worker
  // registers with all of them (--router A,B,...). `ports` (empty, or one per router) fixes
  // their gRPC ports, so Restart() brings a router back where the workers look for it.
  void SetRouters(int n, std::vector<int> ports = {}) {
    num_routers_ = n;
    router_ports_ = std::move(ports);
  }

  // Flags every prefill worker started after this gets (before Start for all of them).
  void SetPrefillFlags(std::vector<std::string> flags) { prefill_flags_ = std::move(flags); }

  ClusterProcess& router() { return procs_[0]; }
  // Every router replica, in the order of the workers' --router list.
  std::vector<ClusterProcess*> routers() { return workers("router"); }
  // Stable addresses: procs_ is a deque.
  std::vector<ClusterProcess*> workers(const std::string& role) {
    std::vector<ClusterProcess*> out;
    for (auto& p : procs_) {
      if (p.role == role) out.push_back(&p);
    }
    return out;
  }

  // SIGKILL, reaped.
  static void Kill(ClusterProcess* p) {
    if (p->pid > 0) {
      kill(p->pid, SIGKILL);
      waitpid(p->pid, nullptr, 0);
      p->pid = -1;
    }
    if (p->out_fd >= 0) close(p->out_fd);
    p->out_fd = -1;
  }

  // SIGTERM, bounded wait; true when it exited with status 0.
  static bool Terminate(ClusterProcess* p, std::chrono::seconds timeout) {
    if (p->pid <= 0) return false;
    kill(p->pid, SIGTERM);
    int st = 0;
    if (!internal::WaitUntil(p->pid, internal::Clock::now() + timeout, &st)) return false;
    p->pid = -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }

  // Polls `p`'s /metrics until `metric` (series matching `label_filter`) equals `want`, at most
  // `limit` (a hang guard: it returns as soon as the value is seen); returns the last value seen
  // (nullopt if never scraped).
  static std::optional<double> WaitMetric(const ClusterProcess& p, const std::string& metric,
                                          double want, std::chrono::milliseconds limit,
                                          const std::string& label_filter = "") {
    return WaitMetricUntil(
        p, metric, [want](double v) { return v == want; }, limit, label_filter);
  }
  static std::optional<double> WaitMetricAtLeast(const ClusterProcess& p, const std::string& metric,
                                                 double want, std::chrono::milliseconds limit) {
    return WaitMetricUntil(
        p, metric, [want](double v) { return v >= want; }, limit, "");
  }
  // Polls the process's /metrics until `done(value)` or `limit`; returns the last value read.
  template <typename Pred>
  static std::optional<double> WaitMetricUntil(const ClusterProcess& p, const std::string& metric,
                                               Pred done, std::chrono::milliseconds limit,
                                               const std::string& label_filter) {
    const auto end = std::chrono::steady_clock::now() + limit;
    std::optional<double> last;
    while (true) {
      if (auto body = HttpGet(p.metrics_url)) last = MetricValue(*body, metric, label_filter);
      if ((last && done(*last)) || std::chrono::steady_clock::now() >= end) return last;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

 private:
  std::vector<std::string> WorkerArgv(const std::string& role, int index) const {
    std::vector<std::string> argv = {BinDir() + "/tandem-" + role,
                                     "--model",
                                     ModelDir(),
                                     "--port",
                                     "0",
                                     "--metrics-port",
                                     "0",
                                     "--kv-cache-mb",
                                     "128",
                                     "--threads",
                                     "1",
                                     "--worker-id",
                                     role + "-" + std::to_string(index),
                                     "--router",
                                     router_addr_,
                                     "--log-level",
                                     "warn"};
    if (role == "decode") {
      argv.insert(argv.end(), {"--kv-port", "0"});
      // A test's own --kv-cache-mb replaces the default (an option is taken once).
      if (std::find(decode_flags_.begin(), decode_flags_.end(), "--kv-cache-mb") !=
          decode_flags_.end()) {
        auto kv = std::find(argv.begin(), argv.end(), "--kv-cache-mb");
        argv.erase(kv, kv + 2);
      }
      argv.insert(argv.end(), decode_flags_.begin(), decode_flags_.end());
    } else {
      argv.insert(argv.end(), prefill_flags_.begin(), prefill_flags_.end());
    }
    return argv;
  }

  bool Spawn(const std::string& role, const std::vector<std::string>& argv) {
    ClusterProcess p;
    p.role = role;
    p.argv = argv;
    p.pid = internal::SpawnWithPipe(argv, &p.out_fd);
    if (p.pid < 0) return false;
    procs_.push_back(p);
    return true;
  }

  int num_routers_ = 1;
  std::vector<int> router_ports_;
  std::string router_addr_;  // the workers' --router: every replica, comma-separated
  std::vector<std::string> decode_flags_;
  std::vector<std::string> prefill_flags_;
  std::deque<ClusterProcess> procs_;
};

}  // namespace tandem::testing
