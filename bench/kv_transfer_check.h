// What the two-process KV data plane checks share (nccl_transfer_check.cc,
// cuda_ipc_transfer_check.cc): the byte pattern of every page of every run, the plan of which
// blocks each run moves, the pipe helpers between the two processes, and the receiver's check.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <fmt/format.h>

namespace tandem::kv_check {

// The byte pattern of page (layer, i-th block of run `run`).
inline uint8_t Pattern(int run, int32_t layer, size_t i, size_t byte) {
  return static_cast<uint8_t>(run * 131 + layer * 31 + i * 7 + byte * 13 + (byte >> 8));
}

// Writes run `run`'s pattern into pages (layer, which[i]) of a host copy of a pool of `blocks`.
inline void Fill(std::vector<uint8_t>& host, size_t page, int run, int32_t layers, int32_t blocks,
                 const std::vector<int32_t>& which) {
  for (int32_t l = 0; l < layers; ++l) {
    for (size_t i = 0; i < which.size(); ++i) {
      uint8_t* p = host.data() + (static_cast<size_t>(l) * blocks + which[i]) * page;
      for (size_t b = 0; b < page; ++b) p[b] = Pattern(run, l, i, b);
    }
  }
}

inline bool WriteAll(int fd, const void* p, size_t n) {
  return ::write(fd, p, n) == static_cast<ssize_t>(n);
}
inline bool ReadAll(int fd, void* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, static_cast<char*>(p) + got, n - got);
    if (r <= 0) return false;
    got += static_cast<size_t>(r);
  }
  return true;
}

struct Plan {
  int32_t pool_blocks = 0;
  std::vector<std::vector<int32_t>> dest;  // per run: the receiver's blocks
  std::vector<int32_t> src;                // the sender's blocks (the same every run)
};

// A `tokens`-token prompt's blocks per run, scattered over a pool twice that size.
inline Plan MakePlan(int tokens, int runs, int32_t page_size) {
  Plan p;
  const int32_t n = (tokens + page_size - 1) / page_size;
  p.pool_blocks = 2 * n;
  std::mt19937 rng(7);
  for (int r = 0; r < runs; ++r) {
    std::vector<int32_t> all(p.pool_blocks);
    for (int32_t i = 0; i < p.pool_blocks; ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    p.dest.emplace_back(all.begin(), all.begin() + n);
  }
  for (int32_t i = 0; i < n; ++i) p.src.push_back(i);
  return p;
}

// The receiver's check of run `r`: every page the run moved (`got`, the pool copied to the host)
// carries its pattern. Prints the first page that differs.
inline bool RunArrived(const std::vector<uint8_t>& got, const Plan& plan, int r, size_t page,
                       int32_t layers) {
  std::vector<uint8_t> want(got.size());
  Fill(want, page, r, layers, plan.pool_blocks, plan.dest[r]);
  for (int32_t l = 0; l < layers; ++l) {
    for (int32_t b : plan.dest[r]) {
      const size_t at = (static_cast<size_t>(l) * plan.pool_blocks + b) * page;
      if (std::memcmp(got.data() + at, want.data() + at, page) != 0) {
        fmt::print(stderr, "receiver: run {} layer {} block {} differs\n", r, l, b);
        return false;
      }
    }
  }
  return true;
}

}  // namespace tandem::kv_check
