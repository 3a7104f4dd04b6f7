// Test harness: runs `tandem serve` (and `tandem generate` for references) as real child
// processes. Every wait is bounded; the destructor always stops what was started.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tandem::testing {

// Folder holding the tandem binaries (next to this test's build tree: <build>/bin).
std::string BinDir();
// The default model folder in the source tree.
std::string ModelDir();

// Runs argv to completion (bounded); returns its stdout, nullopt on timeout or failure to start.
std::optional<std::string> RunCapture(const std::vector<std::string>& argv,
                                      std::chrono::seconds timeout, int* exit_status);

// Pids whose parent is `parent`.
std::vector<pid_t> ChildPids(pid_t parent);
bool ProcessAlive(pid_t pid);

class ServeProcess {
 public:
  ServeProcess() = default;
  ~ServeProcess();
  ServeProcess(const ServeProcess&) = delete;
  ServeProcess& operator=(const ServeProcess&) = delete;

  // Starts `tandem serve` with `extra` flags; waits (bounded) for its three address lines.
  bool Start(const std::vector<std::string>& extra, std::chrono::seconds timeout);
  // SIGTERM and a bounded wait for exit; true when it exited with status 0 in time.
  bool Stop(std::chrono::seconds timeout, int* exit_status);

  pid_t pid() const { return pid_; }
  const std::string& router_address() const { return router_; }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string router_;
};

namespace internal {

using Clock = std::chrono::steady_clock;

inline pid_t SpawnWithPipe(const std::vector<std::string>& argv, int* out_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return -1;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  close(fds[1]);
  *out_fd = fds[0];
  return pid;
}

// Waits for `pid` until `deadline`; true when it exited (status in *status).
inline bool WaitUntil(pid_t pid, Clock::time_point deadline, int* status) {
  while (true) {
    int st = 0;
    const pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid) {
      if (status != nullptr) *status = st;
      return true;
    }
    if (r < 0) return true;
    if (Clock::now() >= deadline) return false;
    usleep(20 * 1000);
  }
}

}  // namespace internal

inline std::string BinDir() {
  // This test runs from <build>/tests; the binaries are in <build>/bin.
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe");
  return (exe.parent_path().parent_path() / "bin").string();
}

// $TANDEM_MODEL_DIR (a worktree or a CI machine keeps the model elsewhere), else the folder
// tools/setup.sh converts into the repository.
inline std::string ModelDir() {
  if (const char* env = std::getenv("TANDEM_MODEL_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return std::string(TANDEM_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct";
}

inline std::optional<std::string> RunCapture(const std::vector<std::string>& argv,
                                             std::chrono::seconds timeout, int* exit_status) {
  int fd = -1;
  const pid_t pid = internal::SpawnWithPipe(argv, &fd);
  if (pid < 0) return std::nullopt;
  const auto deadline = internal::Clock::now() + timeout;
  std::string out;
  bool eof = false;
  while (!eof && internal::Clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
    } else {
      out.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  int st = 0;
  if (!internal::WaitUntil(pid, deadline + std::chrono::seconds(1), &st)) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return std::nullopt;
  }
  if (exit_status != nullptr) *exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

inline std::vector<pid_t> ChildPids(pid_t parent) {
  std::vector<pid_t> pids;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // pid (comm) state ppid ...: comm may hold spaces; parse after the last ')'.
    const size_t close_paren = line.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(line.substr(close_paren + 1));
    char state;
    pid_t ppid;
    if (rest >> state >> ppid && ppid == parent) pids.push_back(std::stoi(name));
  }
  return pids;
}

inline bool ProcessAlive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return false;
  const size_t close_paren = line.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < line.size() &&
         line[close_paren + 2] != 'Z';
}

inline ServeProcess::~ServeProcess() {
  if (pid_ > 0) {
    const std::vector<pid_t> children = ChildPids(pid_);
    kill(pid_, SIGTERM);
    if (!internal::WaitUntil(pid_, internal::Clock::now() + std::chrono::seconds(15), nullptr)) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    for (pid_t c : children) {
      if (ProcessAlive(c)) kill(c, SIGKILL);
    }
  }
  if (out_fd_ >= 0) close(out_fd_);
}

inline bool ServeProcess::Start(const std::vector<std::string>& extra,
                                std::chrono::seconds timeout) {
  std::vector<std::string> argv = {BinDir() + "/tandem", "serve", "--model", ModelDir()};
  argv.insert(argv.end(), extra.begin(), extra.end());
  pid_ = internal::SpawnWithPipe(argv, &out_fd_);
  if (pid_ < 0) return false;
  const auto deadline = internal::Clock::now() + timeout;
  std::string buf;
  while (internal::Clock::now() < deadline) {
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      const std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      const std::string prefix = "router grpc ";
      if (line.rfind(prefix, 0) == 0) {
        router_ = line.substr(prefix.size());
        return true;
      }
    }
    pollfd p{out_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    char chunk[512];
    const ssize_t n = read(out_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
  }
  return false;
}

inline bool ServeProcess::Stop(std::chrono::seconds timeout, int* exit_status) {
  if (pid_ <= 0) return false;
  kill(pid_, SIGTERM);
  int st = 0;
  if (!internal::WaitUntil(pid_, internal::Clock::now() + timeout, &st)) return false;
  pid_ = -1;
  if (exit_status != nullptr) *exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

}  // namespace tandem::testing
