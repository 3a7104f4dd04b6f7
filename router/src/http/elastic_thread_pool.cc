#include "elastic_thread_pool.h"

#include <system_error>
#include <thread>

#include "tandem/common/logging.h"

namespace tandem::http {

ElasticThreadPool::ElasticThreadPool(int32_t max_threads, std::chrono::milliseconds idle)
    : max_threads_(max_threads < 1 ? 1 : max_threads), idle_(idle) {}

ElasticThreadPool::~ElasticThreadPool() { Shutdown(); }

bool ElasticThreadPool::Submit(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return false;
  tasks_.push_back(std::move(task));
  if (static_cast<int64_t>(tasks_.size()) > idle_threads_ && threads_ < max_threads_) {
    try {
      std::thread([this] { Loop(); }).detach();
      ++threads_;
    } catch (const std::system_error& e) {
      TLOG_WARN("http: cannot start a thread ({}); {} threads serve", e.what(), threads_);
      if (threads_ == 0) {
        tasks_.pop_back();
        return false;
      }
    }
  }
  work_cv_.notify_one();
  return true;
}

void ElasticThreadPool::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (tasks_.empty()) {
      if (stop_) break;
      ++idle_threads_;
      const bool woken =
          work_cv_.wait_for(lock, idle_, [this] { return stop_ || !tasks_.empty(); });
      --idle_threads_;
      if (!woken) break;  // idle too long
      continue;
    }
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task();
    task = nullptr;  // what it holds goes before the lock is taken again
    lock.lock();
  }
  --threads_;
  exit_cv_.notify_all();
}

void ElasticThreadPool::Shutdown() {
  std::unique_lock<std::mutex> lock(mu_);
  stop_ = true;
  work_cv_.notify_all();
  exit_cv_.wait(lock, [this] { return threads_ == 0; });
}

int32_t ElasticThreadPool::threads() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_;
}

}  // namespace tandem::http
