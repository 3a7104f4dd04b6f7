// TokenizeQueue: the threads that template and tokenize Generate requests (gRPC and HTTP), so
// that a burst of long prompts occupies these threads and not gRPC's callback threads or the
// HTTP server's, which keep answering other calls, probes and cancellations meanwhile.
//
// The HTTP server's elastic pool (threads start on demand up to `threads` and end when idle)
// with a bound on the tasks waiting: a task submitted while `max_waiting` wait already is
// refused with RESOURCE_EXHAUSTED naming the bound, and the caller fails its request with it.
// The destructor runs what is queued, then joins.
//
// Thread safety: every method may be called from any thread; not from a task.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "tandem/common/status.h"

namespace tandem {
namespace http {
class ElasticThreadPool;
}

class TokenizeQueue {
 public:
  TokenizeQueue(int32_t threads, int32_t max_waiting);
  ~TokenizeQueue();
  TokenizeQueue(const TokenizeQueue&) = delete;
  TokenizeQueue& operator=(const TokenizeQueue&) = delete;

  // Queues `task`; RESOURCE_EXHAUSTED (task dropped) when `max_waiting` tasks wait already.
  Status Submit(std::function<void()> task);
  // Tasks waiting for a thread now.
  int32_t waiting() const { return waiting_.load(); }

 private:
  const int32_t max_waiting_;
  std::atomic<int32_t> waiting_{0};
  std::unique_ptr<http::ElasticThreadPool> pool_;
};

}  // namespace tandem
