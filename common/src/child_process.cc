#include "tandem/common/child_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

namespace tandem {

StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(std::string role,
                                                            std::vector<std::string> argv) {
  if (argv.empty()) return InvalidArgumentError("argv: empty command line for {}", role);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return UnavailableError("cannot start {}: pipe: {}", role, std::strerror(errno));
  }
  // Everything the child touches after fork is made before it: no allocation in the child.
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(fds[0]);
    close(fds[1]);
    return UnavailableError("cannot start {}: fork: {}", role, std::strerror(err));
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    execv(args[0], args.data());
    std::fprintf(stderr, "cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  return std::unique_ptr<ChildProcess>(new ChildProcess(std::move(role), pid, fds[0]));
}

ChildProcess::ChildProcess(std::string role, pid_t pid, int out_fd)
    : role_(std::move(role)), pid_(pid), out_fd_(out_fd) {}

ChildProcess::~ChildProcess() {
  if (out_fd_ >= 0) close(out_fd_);
}

StatusOr<bool> ChildProcess::ReadEndpoints(std::chrono::milliseconds wait) {
  if (started()) return true;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  const std::string grpc = role_ + " grpc ", metrics = role_ + " metrics ";
  while (true) {
    size_t nl;
    while ((nl = buf_.find('\n')) != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      if (line.rfind(role_ + " ", 0) != 0) continue;
      if (line.rfind(metrics, 0) == 0) metrics_url_ = line.substr(metrics.size());
      if (line.rfind(grpc, 0) == 0) grpc_address_ = line.substr(grpc.size());
      lines_.push_back(std::move(line));
      if (started()) return true;
    }
    if (out_fd_ < 0) return UnavailableError("{} (pid {}) closed its stdout", role_, pid_);
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                          deadline - std::chrono::steady_clock::now())
                          .count();
    pollfd p{out_fd_, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::clamp<int64_t>(left, 0, 1000)));
    if (r < 0 && errno != EINTR)
      return UnavailableError("{}: poll: {}", role_, std::strerror(errno));
    if (r <= 0) {
      if (left <= 0) return false;
      continue;
    }
    char chunk[512];
    const ssize_t n = read(out_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(out_fd_);
      out_fd_ = -1;
      continue;  // lines already buffered first
    }
    buf_.append(chunk, static_cast<size_t>(n));
  }
}

Status ChildProcess::WaitStarted(std::chrono::steady_clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    TANDEM_ASSIGN_OR_RETURN(const bool up,
                            ReadEndpoints(std::max(left, std::chrono::milliseconds(0))));
    if (up) return Status::Ok();
    if (left.count() <= 0) {
      return DeadlineExceededError("{} (pid {}) printed no '{} grpc' line in time", role_, pid_,
                                   role_);
    }
  }
}

bool ChildProcess::Poll() {
  if (exited_) return true;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exited_ = true;
    wait_status_ = status;
  } else if (r < 0 && errno == ECHILD) {
    exited_ = true;  // reaped elsewhere
  }
  return exited_;
}

std::string ChildProcess::DescribeExit() const {
  if (!exited_) return "running";
  if (WIFEXITED(wait_status_))
    return fmt::format("exited with status {}", WEXITSTATUS(wait_status_));
  if (WIFSIGNALED(wait_status_)) return fmt::format("killed by signal {}", WTERMSIG(wait_status_));
  return "exited";
}

bool ChildProcess::exited_cleanly() const {
  return exited_ && WIFEXITED(wait_status_) && WEXITSTATUS(wait_status_) == 0;
}

void ChildProcess::Signal(int sig) {
  if (!exited_ && pid_ > 0) kill(pid_, sig);
}

}  // namespace tandem
