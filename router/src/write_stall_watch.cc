#include "write_stall_watch.h"

#include <vector>

namespace tandem {

WriteStallWatch::WriteStallWatch(std::chrono::milliseconds timeout) : timeout_(timeout) {
  if (timeout_.count() > 0) thread_ = std::thread([this] { Run(); });
}

WriteStallWatch::~WriteStallWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    armed_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<WriteStallWatch::Stream> WriteStallWatch::Watch(std::function<void()> on_stall) {
  if (timeout_.count() <= 0) return nullptr;
  return std::shared_ptr<Stream>(new Stream(this, std::move(on_stall)));
}

void WriteStallWatch::Stream::WriteStarted() {
  WriteStallWatch* w = watch_;
  bool first;
  {
    std::lock_guard<std::mutex> lock(w->mu_);
    if (armed_ || stalled_ || w->stop_) return;
    first = w->armed_.empty();
    armed_ = true;
    since_ = Clock::now();  // under the lock: armed_ stays in time order
    pos_ = w->armed_.insert(w->armed_.end(), shared_from_this());
  }
  if (first) w->cv_.notify_one();  // otherwise the thread already wakes no later than needed
}

void WriteStallWatch::Stream::WriteEnded() {
  std::lock_guard<std::mutex> lock(watch_->mu_);
  if (!armed_) return;
  armed_ = false;
  watch_->armed_.erase(pos_);
}

void WriteStallWatch::Stream::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);  // waits for a running on_stall_
    closed_ = true;
  }
  WriteEnded();
}

void WriteStallWatch::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (armed_.empty()) {
      cv_.wait(lock);
      continue;
    }
    const Clock::time_point now = Clock::now();
    const Clock::time_point due = armed_.front()->since_ + timeout_;
    if (now < due) {
      cv_.wait_until(lock, due);
      continue;
    }
    std::vector<std::shared_ptr<Stream>> stalled;
    while (!armed_.empty() && armed_.front()->since_ + timeout_ <= now) {
      Stream* s = armed_.front().get();
      s->armed_ = false;
      s->stalled_ = true;
      stalled.push_back(std::move(armed_.front()));
      armed_.pop_front();
    }
    lock.unlock();
    for (const auto& s : stalled) {
      std::lock_guard<std::mutex> stream_lock(s->mu_);
      if (!s->closed_) s->on_stall_();
    }
    lock.lock();
  }
}

}  // namespace tandem
