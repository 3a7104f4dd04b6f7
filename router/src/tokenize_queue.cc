#include "tandem/router/tokenize_queue.h"

#include <pthread.h>

#include <algorithm>
#include <utility>

namespace tandem {

TokenizeQueue::TokenizeQueue(int32_t threads, int32_t max_waiting)
    : max_waiting_(std::max(max_waiting, 0)) {
  for (int32_t i = 0; i < std::max(threads, 1); ++i) {
    threads_.emplace_back([this] {
      pthread_setname_np(pthread_self(), "tandem-tokenize");
      Loop();
    });
  }
}

TokenizeQueue::~TokenizeQueue() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

Status TokenizeQueue::Submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return UnavailableError("router is shutting down");
    if (static_cast<int32_t>(tasks_.size()) >= max_waiting_) {
      return ResourceExhaustedError(
          "{} requests wait for tokenization already (--max-tokenize-queue {}); retry later",
          tasks_.size(), max_waiting_);
    }
    tasks_.push_back(std::move(task));
  }
  cv_.notify_one();
  return Status::Ok();
}

int32_t TokenizeQueue::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(tasks_.size());
}

void TokenizeQueue::Loop() {
  while (true) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

}  // namespace tandem
