// RequestQueue: the bounded FIFO of prefill jobs waiting for the scheduler.
//
// Thread safety: all methods may be called concurrently (one mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/prefill_worker/prefill_job.h"

namespace tandem {

class RequestQueue {
 public:
  // `capacity` jobs at most (>= 1).
  explicit RequestQueue(size_t capacity);

  // Appends a job. RESOURCE_EXHAUSTED when the queue holds `capacity` jobs.
  Status Push(std::shared_ptr<PrefillJob> job);
  // The oldest job, or nullptr when empty. The job stays queued.
  std::shared_ptr<PrefillJob> Front() const;
  // Removes the oldest job (no-op when empty).
  void PopFront();
  // Removes and returns every job matching `pred`, in queue order.
  std::vector<std::shared_ptr<PrefillJob>> RemoveIf(const std::function<bool(PrefillJob&)>& pred);
  // Removes and returns every job.
  std::vector<std::shared_ptr<PrefillJob>> Clear();

  size_t size() const;
  // Prompt tokens of every queued job.
  int64_t queued_tokens() const;
  size_t capacity() const { return capacity_; }

 private:
  const size_t capacity_;
  mutable std::mutex mu_;
  std::deque<std::shared_ptr<PrefillJob>> jobs_;
  int64_t queued_tokens_ = 0;
};

}  // namespace tandem
