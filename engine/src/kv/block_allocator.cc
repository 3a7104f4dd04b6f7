#include "tandem/engine/block_allocator.h"

#include <algorithm>

#include "tandem/common/logging.h"

namespace tandem {

BlockAllocator::BlockAllocator(int32_t num_blocks) : ref_counts_(num_blocks, 0) {
  free_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

StatusOr<std::vector<int32_t>> BlockAllocator::Allocate(int32_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (n < 0) return InvalidArgumentError("cannot allocate {} blocks", n);
  if (static_cast<size_t>(n) > free_.size()) {
    return ResourceExhaustedError("KV cache full: {} blocks requested, {} of {} free", n,
                                  free_.size(), ref_counts_.size());
  }
  std::vector<int32_t> out(free_.end() - n, free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - n);
  for (int32_t b : out) ref_counts_[b] = 1;
  return out;
}

void BlockAllocator::Retain(std::span<const int32_t> blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  for (int32_t b : blocks) {
    TANDEM_CHECK(b >= 0 && b < num_blocks() && ref_counts_[b] > 0);
    ++ref_counts_[b];
  }
}

void BlockAllocator::Release(std::span<const int32_t> blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  bool freed = false;
  for (int32_t b : blocks) {
    TANDEM_CHECK(b >= 0 && b < num_blocks() && ref_counts_[b] > 0);
    if (--ref_counts_[b] == 0) {
      free_.push_back(b);
      freed = true;
    }
  }
  if (freed) std::sort(free_.begin(), free_.end(), std::greater<int32_t>());
}

int32_t BlockAllocator::num_free() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int32_t>(free_.size());
}

int32_t BlockAllocator::ref_count(int32_t block) const {
  std::lock_guard<std::mutex> lock(mu_);
  return ref_counts_.at(block);
}

}  // namespace tandem
