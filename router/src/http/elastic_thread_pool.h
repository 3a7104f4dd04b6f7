// ElasticThreadPool: runs tasks on at most `max_threads` threads, started when a task finds no
// idle thread and ending after `idle` without work, so a quiet server holds no threads.
//
// Tasks queue without bound when every thread is busy; the caller bounds what it submits (the
// HTTP server: one task per connection, connections capped).
//
// Thread safety: every method may be called from any thread; Shutdown once, not from a task.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

namespace tandem::http {

class ElasticThreadPool {
 public:
  ElasticThreadPool(int32_t max_threads, std::chrono::milliseconds idle);
  ~ElasticThreadPool();
  ElasticThreadPool(const ElasticThreadPool&) = delete;
  ElasticThreadPool& operator=(const ElasticThreadPool&) = delete;

  // Queues `task`. False (task dropped) when shut down, or when no thread runs and none could
  // be started (the process is out of threads).
  bool Submit(std::function<void()> task);
  // Runs what is queued, then waits for every thread to end. Later Submits fail.
  void Shutdown();
  // Threads alive now.
  int32_t threads() const;

 private:
  void Loop();

  const int32_t max_threads_;
  const std::chrono::milliseconds idle_;
  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable exit_cv_;
  std::deque<std::function<void()>> tasks_;
  int32_t threads_ = 0;
  int32_t idle_threads_ = 0;
  bool stop_ = false;
};

}  // namespace tandem::http
