// LiveSet<T>: the objects of one kind in flight (calls, streams), so a drain can count them and,
// once its budget has run out, reach each one to end it properly.
//
// Holds weak references: an object is added when it starts and removed when it is done; the
// set never keeps one alive.
//
// Thread safety: every method may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace tandem {

template <typename T>
class LiveSet {
 public:
  void Add(const std::shared_ptr<T>& item) {
    std::lock_guard<std::mutex> lock(mu_);
    items_.emplace(item.get(), item);
  }
  void Remove(const T* item) {
    std::lock_guard<std::mutex> lock(mu_);
    items_.erase(item);
  }
  // Added and not yet removed.
  int32_t count() const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int32_t>(items_.size());
  }
  // The ones still alive, kept alive while the caller holds them (use them outside any lock of
  // theirs: ending one may Remove it at once).
  std::vector<std::shared_ptr<T>> Snapshot() const {
    std::vector<std::shared_ptr<T>> out;
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [ptr, weak] : items_) {
      if (auto item = weak.lock()) out.push_back(std::move(item));
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<const T*, std::weak_ptr<T>> items_;
};

}  // namespace tandem
