// TokenizeQueue: the threads that template and tokenize Generate requests (gRPC and HTTP), so
// that a burst of long prompts occupies these threads and not gRPC's callback threads or the
// HTTP server's, which keep answering other calls, probes and cancellations meanwhile.
//
// A fixed number of threads (started in the constructor) and a bounded queue: a task submitted
// while `max_waiting` tasks already wait is refused with RESOURCE_EXHAUSTED naming the bound, and
// the caller fails its request with it. The destructor runs what is queued, then joins.
//
// Thread safety: every method may be called from any thread; not from a task's own destructor.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

class TokenizeQueue {
 public:
  TokenizeQueue(int32_t threads, int32_t max_waiting);
  ~TokenizeQueue();
  TokenizeQueue(const TokenizeQueue&) = delete;
  TokenizeQueue& operator=(const TokenizeQueue&) = delete;

  // Queues `task`; RESOURCE_EXHAUSTED (task dropped) when `max_waiting` tasks wait already.
  Status Submit(std::function<void()> task);
  // Tasks waiting for a thread now.
  int32_t waiting() const;

 private:
  void Loop();

  const int32_t max_waiting_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace tandem
