// ChildProcess: a Tandem process (router, prefill or decode worker) started by another one
// (`tandem serve`, the planner's process actuator). fork + exec with stdout on a pipe; the child
// gets its own process group (a Ctrl-C reaches only the parent, which stops its children in
// order), PR_SET_PDEATHSIG SIGTERM (it never outlives the parent) and every signal unblocked.
// stderr is inherited. The parent reads the child's endpoint lines from the pipe: every line
// that starts with "<role> " up to "<role> grpc HOST:PORT", which a Tandem process prints once it
// serves (a worker: once the router accepted its registration).
//
// The destructor closes the pipe and neither signals nor reaps the child: its owner does that
// (Signal, Poll).
//
// Thread safety: none; one owner calls every method.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

class ChildProcess {
 public:
  // UNAVAILABLE when the pipe or fork fails. An exec failure shows as an early exit (status
  // 127, and a line on stderr).
  static StatusOr<std::unique_ptr<ChildProcess>> Spawn(std::string role,
                                                       std::vector<std::string> argv);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Reads what the child printed, waiting at most `wait` for more. true once its
  // "<role> grpc" line was read; false while not yet; UNAVAILABLE naming the child when its
  // stdout closed before that line (it died).
  StatusOr<bool> ReadEndpoints(std::chrono::milliseconds wait);
  // ReadEndpoints until the "<role> grpc" line; DEADLINE_EXCEEDED past `deadline`.
  Status WaitStarted(std::chrono::steady_clock::time_point deadline);

  bool started() const { return !grpc_address_.empty(); }
  // From the endpoint lines ("" until read): HOST:PORT, and the /metrics URL if it serves one.
  const std::string& grpc_address() const { return grpc_address_; }
  const std::string& metrics_url() const { return metrics_url_; }
  // Every "<role> ..." line read, in order.
  const std::vector<std::string>& endpoint_lines() const { return lines_; }

  // Reaps the child if it has exited (never blocks); true once it has.
  bool Poll();
  bool exited() const { return exited_; }
  // "exited with status N" / "killed by signal N" (after Poll returned true).
  std::string DescribeExit() const;
  bool exited_cleanly() const;
  // kill(pid, sig) while it has not been reaped.
  void Signal(int sig);

  pid_t pid() const { return pid_; }
  const std::string& role() const { return role_; }

 private:
  ChildProcess(std::string role, pid_t pid, int out_fd);

  std::string role_;
  pid_t pid_ = -1;
  int out_fd_ = -1;
  bool exited_ = false;
  int wait_status_ = 0;
  std::string buf_;
  std::vector<std::string> lines_;
  std::string grpc_address_;
  std::string metrics_url_;
};

}  // namespace tandem
