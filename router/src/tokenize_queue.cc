#include "tandem/router/tokenize_queue.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <utility>

#include "http/elastic_thread_pool.h"

namespace tandem {

TokenizeQueue::TokenizeQueue(int32_t threads, int32_t max_waiting)
    : max_waiting_(std::max(max_waiting, 0)),
      pool_(std::make_unique<http::ElasticThreadPool>(std::max(threads, 1),
                                                      std::chrono::seconds(10))) {}

TokenizeQueue::~TokenizeQueue() { pool_->Shutdown(); }

Status TokenizeQueue::Submit(std::function<void()> task) {
  // Counted before it is queued and uncounted when a thread takes it: never below the truth.
  const int32_t before = waiting_.fetch_add(1);
  if (before >= max_waiting_) {
    waiting_.fetch_sub(1);
    return ResourceExhaustedError(
        "{} requests wait for tokenization already (--max-tokenize-queue {}); retry later", before,
        max_waiting_);
  }
  const bool queued = pool_->Submit([this, task = std::move(task)] {
    waiting_.fetch_sub(1);
    pthread_setname_np(pthread_self(), "tandem-tokenize");
    task();
  });
  if (!queued) {
    waiting_.fetch_sub(1);
    return UnavailableError("no tokenize thread could be started, or the router is stopping");
  }
  return Status::Ok();
}

}  // namespace tandem
