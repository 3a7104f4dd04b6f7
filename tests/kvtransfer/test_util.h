// Helpers shared by the kvtransfer tests.
#pragma once

#include <dirent.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tandem/kvtransfer/formatter.h"
#include "tandem/kvtransfer/layout.h"

namespace tandem::testing_kv {

// Small but non-trivial: page = 2 * 4 * 2 * 8 * 4 = 512 bytes.
inline KvPageLayout SmallLayout() {
  KvPageLayout l;
  l.num_layers = 4;
  l.num_kv_heads = 2;
  l.head_dim = 8;
  l.page_size = 4;
  l.dtype = DType::kF32;
  l.model_hash = 0x1234abcd;
  return l;
}

inline void FillRandom(const HostPageBuffer& buf, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto bytes = buf.bytes();
  for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
    uint64_t v = rng();
    std::memcpy(bytes.data() + i, &v, 8);
  }
}

// `n` distinct block ids drawn from [0, pool), in random order.
inline std::vector<int32_t> RandomBlocks(int32_t n, int32_t pool, std::mt19937_64& rng) {
  std::vector<int32_t> all(pool);
  for (int32_t i = 0; i < pool; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(n);
  return all;
}

// Every layer's page src_blocks[i] equals dst page dst_blocks[i].
inline void ExpectSamePages(const PageAccessor& src, const std::vector<int32_t>& src_blocks,
                            const PageAccessor& dst, const std::vector<int32_t>& dst_blocks,
                            int32_t num_layers) {
  ASSERT_EQ(src_blocks.size(), dst_blocks.size());
  for (int32_t layer = 0; layer < num_layers; ++layer) {
    for (size_t i = 0; i < src_blocks.size(); ++i) {
      auto a = src.Page(layer, src_blocks[i]);
      auto b = dst.Page(layer, dst_blocks[i]);
      ASSERT_EQ(a.size(), b.size());
      ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size()), 0)
          << "layer " << layer << " page " << i << " (src block " << src_blocks[i] << ", dst block "
          << dst_blocks[i] << ")";
    }
  }
}

inline bool AllZero(std::span<const std::byte> bytes) {
  for (std::byte b : bytes) {
    if (b != std::byte{0}) return false;
  }
  return true;
}

inline int CountDirEntries(const char* path) {
  DIR* d = opendir(path);
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n - (std::strcmp(path, "/proc/self/fd") == 0 ? 1 : 0);  // the DIR's own fd
}
inline int CountFds() { return CountDirEntries("/proc/self/fd"); }
inline int CountThreads() { return CountDirEntries("/proc/self/task"); }

// Hang guard of the waits below and of the tests' transfers: they end as soon as what they wait
// for happens, so this only bounds a failing run. Deadlines that the tests expect to end a
// request are short and explicit; this one is long enough never to be mistaken for them.
inline constexpr std::chrono::milliseconds kGuard = std::chrono::minutes(2);

// Deadlines of transfers that a test does not expect to expire: past the hang guard of every
// wait, so a request that such a wait sees end was ended by what the test did (a cancel, a
// refusal, the other side's deadline), never by this deadline.
inline constexpr std::chrono::milliseconds kLong = 2 * kGuard;

// A transfer deadline `d` from now.
inline std::chrono::steady_clock::time_point In(std::chrono::milliseconds d) {
  return std::chrono::steady_clock::now() + d;
}

// Waits (bounded) for `pred`, polling: for observing other threads' progress in tests.
template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds timeout = kGuard) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pred();
}

// Captures a DoneCallback's status; Get() waits with a timeout.
class DoneLatch {
 public:
  std::function<void(const Status&)> Callback() {
    return [this](const Status& s) {
      std::lock_guard<std::mutex> lock(mu_);
      EXPECT_FALSE(status_.has_value()) << "done called twice";
      status_ = s;
      at_ = std::chrono::steady_clock::now();
      ++calls_;
      cv_.notify_all();
    };
  }
  std::optional<Status> Get(std::chrono::milliseconds timeout = kGuard) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return status_.has_value(); });
    return status_;
  }
  std::chrono::steady_clock::time_point at() {
    std::lock_guard<std::mutex> lock(mu_);
    return at_;
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<Status> status_;
  std::chrono::steady_clock::time_point at_;
  int calls_ = 0;
};

}  // namespace tandem::testing_kv
