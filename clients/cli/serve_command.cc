// `tandem serve` starts tandem-router, then tandem-prefill and tandem-decode workers that
// register with it (all found next to this executable), as child processes on one host; waits
// (bounded) for each to print its "<role> grpc HOST:PORT" line, prints every endpoint line
// ("<role> metrics URL", "router http HOST:PORT", "<role> grpc HOST:PORT"), and supervises: SIGINT
// / SIGTERM stop every child (router first, then workers; SIGTERM, bounded wait, then SIGKILL); a
// child that dies stops the rest and exits non-zero. Children get PR_SET_PDEATHSIG so they do not
// outlive a killed `tandem serve`.
#include "serve_command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tandem/common/logging.h"
#include "tandem/engine/gguf.h"
#include "tandem/engine/weights_flag.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

struct ServeFlags {
  std::string model = "models/SmolLM2-135M-Instruct";
  std::string host = "127.0.0.1";
  int32_t port = 0;
  int32_t metrics_port = 0;
  int32_t http_port = 0;
  int32_t max_queue = 256;
  std::vector<std::string> api_keys;
  std::string api_key_file;
  int32_t num_prefill = 1;
  int32_t num_decode = 1;
  int64_t kv_cache_mb = 256;
  int32_t threads = 0;
  std::string weights = "auto";
  DeviceFlags device;
  int32_t start_timeout_s = 120;
  int64_t drain_ms = 30000;
  int64_t prefill_timeout_ms = 120000;  // router --prefill-timeout-ms and prefill --max-request-ms
  int32_t stop_timeout_s = 0;           // 0: the drain budget plus 15 s
  std::string log_level = "info";
  std::string kv_transport = "auto";
};

struct Child {
  std::string role;
  pid_t pid = -1;
  int out_fd = -1;  // the child's stdout
  bool exited = false;
};

// fork + exec `argv` with stdout on a pipe; `signals` are unblocked in the child.
std::optional<Child> Spawn(const std::string& role, std::vector<std::string> argv,
                           const std::vector<std::string>& more = {}) {
  argv.insert(argv.end(), more.begin(), more.end());
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return std::nullopt;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);  // Ctrl-C reaches only `tandem serve`, which stops the children in order
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    std::fprintf(stderr, "tandem serve: cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  Child c;
  c.role = role;
  c.pid = pid;
  c.out_fd = fds[0];
  return c;
}

// Reads the child's stdout up to its "<role> grpc HOST:PORT" line, keeping every "<role> ..."
// endpoint line before it (e.g. "<role> metrics URL") in `lines`; returns HOST:PORT, or nullopt
// at EOF (the child died) or past `deadline`.
std::optional<std::string> WaitForAddress(const Child& c, Clock::time_point deadline,
                                          std::vector<std::string>* lines) {
  const std::string prefix = c.role + " grpc ";
  std::string buf;
  while (true) {
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line.rfind(c.role + " ", 0) == 0) lines->push_back(line);
      if (line.rfind(prefix, 0) == 0) return line.substr(prefix.size());
    }
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return std::nullopt;
    pollfd p{c.out_fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (r < 0 && errno != EINTR) return std::nullopt;
    if (r <= 0) continue;
    char chunk[512];
    const ssize_t n = read(c.out_fd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    buf.append(chunk, static_cast<size_t>(n));
  }
}

// Reaps children that have exited; returns the first one found dead, if any.
Child* ReapExited(std::vector<Child>& children) {
  Child* dead = nullptr;
  for (auto& c : children) {
    if (c.exited) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.exited = true;
      if (dead == nullptr) dead = &c;
      if (WIFEXITED(status)) {
        TLOG_WARN("tandem serve: {} (pid {}) exited with status {}", c.role, c.pid,
                  WEXITSTATUS(status));
      } else if (WIFSIGNALED(status)) {
        TLOG_WARN("tandem serve: {} (pid {}) killed by signal {}", c.role, c.pid, WTERMSIG(status));
      }
    }
  }
  return dead;
}

// Waits (bounded) for every live child whose role is (or, with `invert`, is not) `role`.
void WaitForRole(std::vector<Child>& children, const std::string& role, bool invert,
                 Clock::time_point deadline) {
  while (Clock::now() < deadline) {
    bool any = false;
    for (auto& c : children) {
      if (c.exited || (c.role == role) == invert) continue;
      if (waitpid(c.pid, nullptr, WNOHANG) == c.pid) {
        c.exited = true;
      } else {
        any = true;
      }
    }
    if (!any) return;
    usleep(50 * 1000);
  }
}

// Stops the router first (it drains: in-flight streams finish while the workers still serve),
// then the workers; each phase is bounded by `timeout`, stragglers get SIGKILL.
void StopAll(std::vector<Child>& children, std::chrono::seconds timeout) {
  for (auto& c : children) {
    if (!c.exited && c.role == "router") kill(c.pid, SIGTERM);
  }
  WaitForRole(children, "router", false, Clock::now() + timeout);
  for (auto& c : children) {
    if (!c.exited && c.role != "router") kill(c.pid, SIGTERM);
  }
  WaitForRole(children, "router", true, Clock::now() + timeout);
  for (auto& c : children) {
    if (c.exited) continue;
    TLOG_WARN("tandem serve: {} (pid {}) did not stop in time; killing it", c.role, c.pid);
    kill(c.pid, SIGKILL);
    waitpid(c.pid, nullptr, 0);
    c.exited = true;
  }
  for (auto& c : children) {
    if (c.out_fd >= 0) close(c.out_fd);
    c.out_fd = -1;
  }
}

int RunServe(const ServeFlags& f) {
  SetLogLevel(f.log_level);
  std::error_code ec;
  const std::filesystem::path bin_dir =
      std::filesystem::read_symlink("/proc/self/exe", ec).parent_path();
  if (ec) {
    std::fprintf(stderr, "error: cannot locate this executable: %s\n", ec.message().c_str());
    return 1;
  }
  const std::string model = std::filesystem::absolute(f.model).string();
  if (IsGgufPath(model)) {
    if (!std::filesystem::is_regular_file(model)) {
      std::fprintf(stderr, "error: %s: no such file\n", model.c_str());
      return 1;
    }
  } else if (!std::filesystem::exists(std::filesystem::path(model) / "config.json")) {
    std::fprintf(stderr, "error: %s has no config.json\n", model.c_str());
    return 1;
  }
  if (f.num_prefill < 1 || f.num_decode < 1) {
    std::fprintf(stderr, "error: --prefill and --decode must be >= 1\n");
    return 1;
  }

  // Signals are taken synchronously; children unblock them before exec.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGCHLD);
  sigprocmask(SIG_BLOCK, &signals, nullptr);

  std::vector<Child> children;
  // Each process drains within its budget, then ends what is left within a few seconds.
  const auto stop_timeout = f.stop_timeout_s > 0 ? std::chrono::seconds(f.stop_timeout_s)
                                                 : std::chrono::seconds(f.drain_ms / 1000 + 15);
  const std::string drain_ms = std::to_string(f.drain_ms);
  auto fail = [&](const std::string& what) {
    std::fprintf(stderr, "error: %s\n", what.c_str());
    StopAll(children, stop_timeout);
    return 1;
  };
  const std::string threads = std::to_string(f.threads);
  const std::string kv_mb = std::to_string(f.kv_cache_mb);
  const auto start_deadline = Clock::now() + std::chrono::seconds(f.start_timeout_s);
  std::vector<std::string> lines;
  // The router first: workers register with it (and heartbeat their load), and each worker
  // prints its address only once the router has accepted it, so every printed worker is in
  // rotation when the lines appear.
  std::vector<std::string> router_argv = {(bin_dir / "tandem-router").string(),
                                          "--model",
                                          model,
                                          "--host",
                                          f.host,
                                          "--port",
                                          std::to_string(f.port),
                                          "--metrics-port",
                                          std::to_string(f.metrics_port),
                                          "--http-port",
                                          std::to_string(f.http_port),
                                          "--max-queue",
                                          std::to_string(f.max_queue),
                                          "--drain-ms",
                                          drain_ms,
                                          "--kv-transport",
                                          f.kv_transport,
                                          "--prefill-timeout-ms",
                                          std::to_string(f.prefill_timeout_ms),
                                          "--log-level",
                                          f.log_level};
  for (const auto& k : f.api_keys) {
    router_argv.push_back("--api-key");
    router_argv.push_back(k);
  }
  if (!f.api_key_file.empty()) {
    router_argv.push_back("--api-key-file");
    router_argv.push_back(std::filesystem::absolute(f.api_key_file).string());
  }
  auto router = Spawn("router", router_argv);
  if (!router) return fail("cannot start tandem-router");
  children.push_back(*router);
  auto router_addr = WaitForAddress(children.back(), start_deadline, &lines);
  if (!router_addr) return fail("router did not start (see its log above)");
  const std::string worker_metrics_port = f.metrics_port < 0 ? "-1" : "0";
  for (int32_t i = 0; i < f.num_prefill; ++i) {
    auto c = Spawn("prefill",
                   {(bin_dir / "tandem-prefill").string(),
                    "--model",
                    model,
                    "--host",
                    f.host,
                    "--port",
                    "0",
                    "--kv-cache-mb",
                    kv_mb,
                    "--threads",
                    threads,
                    "--worker-id",
                    "prefill-" + std::to_string(i),
                    "--router",
                    *router_addr,
                    "--metrics-port",
                    worker_metrics_port,
                    "--drain-ms",
                    drain_ms,
                    "--weights",
                    f.weights,
                    "--kv-transport",
                    f.kv_transport,
                    "--max-request-ms",
                    std::to_string(f.prefill_timeout_ms),
                    "--log-level",
                    f.log_level},
                   DeviceFlagArgs(f.device));
    if (!c) return fail("cannot start tandem-prefill");
    children.push_back(*c);
  }
  for (int32_t i = 0; i < f.num_decode; ++i) {
    auto c = Spawn("decode",
                   {(bin_dir / "tandem-decode").string(),
                    "--model",
                    model,
                    "--host",
                    f.host,
                    "--port",
                    "0",
                    "--kv-port",
                    "0",
                    "--kv-cache-mb",
                    kv_mb,
                    "--threads",
                    threads,
                    "--worker-id",
                    "decode-" + std::to_string(i),
                    "--router",
                    *router_addr,
                    "--metrics-port",
                    worker_metrics_port,
                    "--drain-ms",
                    drain_ms,
                    "--weights",
                    f.weights,
                    "--kv-transport",
                    f.kv_transport,
                    "--log-level",
                    f.log_level},
                   DeviceFlagArgs(f.device));
    if (!c) return fail("cannot start tandem-decode");
    children.push_back(*c);
  }
  for (auto& c : children) {
    if (c.role == "router") continue;
    if (!WaitForAddress(c, start_deadline, &lines)) {
      return fail(c.role + " worker did not start (see its log above)");
    }
  }
  for (const auto& l : lines) std::printf("%s\n", l.c_str());
  std::fflush(stdout);

  while (true) {
    timespec tick{1, 0};
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      TLOG_INFO("tandem serve: signal {}, stopping", sig);
      StopAll(children, stop_timeout);
      return 0;
    }
    if (Child* dead = ReapExited(children)) {
      return fail(dead->role + " process exited; stopping the others");
    }
  }
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* cmd =
      app.add_subcommand("serve", "Run router + prefill + decode workers on this machine");
  cmd->add_option("--model", flags->model, "Checkpoint folder or .gguf file")
      ->capture_default_str();
  cmd->add_option("--host", flags->host, "Address every process serves on")->capture_default_str();
  cmd->add_option("--port", flags->port, "Router gRPC port (0 = pick)")->capture_default_str();
  cmd->add_option("--metrics-port", flags->metrics_port,
                  "Router /metrics port (0 = pick; -1 = no metrics anywhere); workers pick theirs")
      ->capture_default_str();
  cmd->add_option("--http-port", flags->http_port,
                  "Router OpenAI-compatible HTTP port (0 = pick, -1 = off)")
      ->capture_default_str();
  cmd->add_option("--api-key", flags->api_keys,
                  "Require this API key on the router's gRPC and HTTP APIs (repeatable)");
  cmd->add_option("--api-key-file", flags->api_key_file, "File with one API key per line")
      ->check(CLI::ExistingFile);
  cmd->add_option("--max-queue", flags->max_queue,
                  "Requests in the router at once; more are refused (RESOURCE_EXHAUSTED / 429)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--prefill", flags->num_prefill, "Prefill workers")->capture_default_str();
  cmd->add_option("--decode", flags->num_decode, "Decode workers")->capture_default_str();
  cmd->add_option("--kv-cache-mb", flags->kv_cache_mb, "KV cache per worker in MiB")
      ->capture_default_str();
  cmd->add_option("--threads", flags->threads, "Compute threads per worker (0 = every core)")
      ->capture_default_str();
  AddWeightsFlag(*cmd, &flags->weights);
  AddDeviceFlags(*cmd, &flags->device);
  cmd->add_option("--start-timeout-s", flags->start_timeout_s, "Longest wait for a child to serve")
      ->capture_default_str();
  cmd->add_option("--prefill-timeout-ms", flags->prefill_timeout_ms,
                  "Longest a prompt may take in prefill, queueing included (the router's "
                  "--prefill-timeout-ms and the prefill workers' --max-request-ms)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--drain-ms", flags->drain_ms,
                  "Drain budget of every process on Ctrl-C / SIGTERM: in-flight requests may "
                  "finish within it, then end with UNAVAILABLE")
      ->capture_default_str();
  cmd->add_option("--stop-timeout-s", flags->stop_timeout_s,
                  "Longest wait for each phase of the stop before SIGKILL (0 = drain + 15 s)")
      ->capture_default_str();
  cmd->add_option("--kv-transport", flags->kv_transport,
                  "KV transport between prefill and decode workers: auto (shm on one host), tcp, "
                  "shm")
      ->check(CLI::IsMember({"auto", "tcp", "shm"}))
      ->capture_default_str();
  cmd->add_option("--log-level", flags->log_level, "Log level of every process")
      ->capture_default_str();
  cmd->callback([flags, exit_code] { *exit_code = RunServe(*flags); });
}

}  // namespace tandem
