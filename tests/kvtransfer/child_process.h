// Forked peer processes for the kvtransfer tests (a peer that is SIGKILLed or stopped).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include <gtest/gtest.h>

#include "test_util.h"

namespace tandem::testing_kv {

// Child side of the port hand-off; returns -1 on timeout.
inline int ReadInt(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return -1;
  int v = -1;
  return ::read(fd, &v, sizeof(v)) == sizeof(v) ? v : -1;
}

// Runs `child` in a forked process (which never returns; SIGALRM ends it if the parent dies).
// Returns the child pid and a pipe: parent writes to .second[1] / reads .second[0] as needed.
struct Child {
  pid_t pid = -1;
  int to_child = -1;    // parent writes
  int from_child = -1;  // parent reads
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (to_child >= 0) ::close(to_child);
    if (from_child >= 0) ::close(from_child);
  }
};

template <typename Fn>
inline void Spawn(Child* c, Fn child_main) {
  // Forking is safest with one thread: earlier tests joined all of theirs (sanitizers may keep
  // a background thread of their own, so this is a note, not a failure).
  if (CountThreads() != 1) {
    std::fprintf(stderr, "note: forking with %d threads\n", CountThreads());
  }
  int down[2], up[2];
  ASSERT_EQ(::pipe2(down, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(up, O_CLOEXEC), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::alarm(600);  // if the parent dies without killing it
    ::close(down[1]);
    ::close(up[0]);
    child_main(down[0], up[1]);
    while (true) ::pause();
  }
  ::close(down[0]);
  ::close(up[1]);
  c->pid = pid;
  c->to_child = down[1];
  c->from_child = up[0];
}

}  // namespace tandem::testing_kv
