// BlockAllocator: host-side bookkeeping of KV blocks (ids and reference counts). It never
// touches page memory, which lives in a PagePool (host, shared or device memory).
//
// Thread safety: all methods may be called concurrently.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <vector>

#include "tandem/common/status.h"

namespace tandem {

// Hands out block ids with reference counts (a block shared by two sequences is freed when
// the last one lets go). Allocation is all-or-nothing.
class BlockAllocator {
 public:
  explicit BlockAllocator(int32_t num_blocks);

  // `n` blocks with reference count 1, lowest ids first; RESOURCE_EXHAUSTED (nothing taken)
  // when fewer than `n` are free.
  StatusOr<std::vector<int32_t>> Allocate(int32_t n);
  // Adds a reference to each block (they must be in use).
  void Retain(std::span<const int32_t> blocks);
  // Drops a reference to each block; blocks reaching zero become free.
  // Releasing a block that is not in use is a broken invariant (abort).
  void Release(std::span<const int32_t> blocks);

  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  int32_t num_free() const;
  int32_t num_used() const { return num_blocks() - num_free(); }
  int32_t ref_count(int32_t block) const;

 private:
  mutable std::mutex mu_;
  std::vector<int32_t> ref_counts_;
  std::vector<int32_t> free_;  // kept sorted descending so back() is the lowest free id
};

}  // namespace tandem
