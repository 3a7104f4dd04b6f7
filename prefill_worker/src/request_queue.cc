#include "tandem/prefill_worker/request_queue.h"

#include <utility>

namespace tandem {

RequestQueue::RequestQueue(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

Status RequestQueue::Push(std::shared_ptr<PrefillJob> job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (jobs_.size() >= capacity_) {
    return ResourceExhaustedError("prefill queue is full ({} requests waiting)", jobs_.size());
  }
  queued_tokens_ += job->prompt_tokens();
  jobs_.push_back(std::move(job));
  return Status::Ok();
}

std::shared_ptr<PrefillJob> RequestQueue::Front() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.empty() ? nullptr : jobs_.front();
}

void RequestQueue::PopFront() {
  std::lock_guard<std::mutex> lock(mu_);
  if (jobs_.empty()) return;
  queued_tokens_ -= jobs_.front()->prompt_tokens();
  jobs_.pop_front();
}

std::vector<std::shared_ptr<PrefillJob>> RequestQueue::RemoveIf(
    const std::function<bool(PrefillJob&)>& pred) {
  std::vector<std::shared_ptr<PrefillJob>> removed;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (pred(**it)) {
      queued_tokens_ -= (*it)->prompt_tokens();
      removed.push_back(std::move(*it));
      it = jobs_.erase(it);
    } else {
      ++it;
    }
  }
  return removed;
}

std::vector<std::shared_ptr<PrefillJob>> RequestQueue::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<PrefillJob>> all(std::make_move_iterator(jobs_.begin()),
                                               std::make_move_iterator(jobs_.end()));
  jobs_.clear();
  queued_tokens_ = 0;
  return all;
}

size_t RequestQueue::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return jobs_.size();
}

int64_t RequestQueue::queued_tokens() const {
  std::lock_guard<std::mutex> lock(mu_);
  return queued_tokens_;
}

}  // namespace tandem
