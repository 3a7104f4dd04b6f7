#include "tandem/rpc/server_main.h"

#include <pthread.h>
#include <signal.h>

#include "tandem/common/logging.h"

namespace tandem {

int RunServerUntilSignal(std::string_view name, std::chrono::milliseconds drain_budget,
                         const std::function<Status()>& start,
                         const std::function<void(std::chrono::milliseconds)>& drain) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (Status st = start(); !st.ok()) {
    TLOG_ERROR("{}: {}", name, st.ToString());
    return 1;
  }
  int sig = 0;
  sigwait(&signals, &sig);
  TLOG_INFO("{}: signal {}, draining (budget {} ms)", name, sig, drain_budget.count());
  drain(drain_budget);
  TLOG_INFO("{}: stopped", name);
  return 0;
}

}  // namespace tandem
