// CPU GEMM of our own: out = x · wᵀ (+ bias) over weights repacked once into panels, batch-
// invariant by construction.
//
// Arithmetic contract (what makes it invariant): every output element is
//
//   acc = 0;  for j = 0 .. k-1 in order:  acc = fma(x[i, j], w[o, j], acc);  out[i, o] = acc (+
//   bias[o])
//
// one fused multiply-add per term, in increasing j, whatever the number of rows n, the row's
// place among them, the thread count or the SIMD width (AVX-512, AVX2, SSE4 or scalar compute a
// 16-column panel as 1, 2, 4 or 16 lanes of the same scalar sequence). Threads split output
// panels, never k. So a row's result is bit-identical alone or in any batch, on any of these
// targets; ref::Matmul (plain double-free float loop) is the value reference within rounding.
//
// Weights may be stored as bf16 (half the bytes to stream at decode); each is widened exactly
// to f32 before its fma, so the result equals the f32 kernel run on the bf16-rounded weights.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::kernels::cpu {

// Output columns (weight rows) per panel.
inline constexpr int64_t kPanelCols = 16;

enum class WeightStorage { kF32, kBF16 };

std::string_view WeightStorageName(WeightStorage s);
// "f32" | "bf16"; INVALID_ARGUMENT naming the value otherwise.
StatusOr<WeightStorage> ParseWeightStorage(std::string_view name);

// A weight matrix w[m, k] (row-major, one output per row: the PyTorch Linear layout) repacked
// into ceil(m / 16) panels, each k-major: panel p holds w[16p + c, j] at element j * 16 + c; rows
// past m are zero. Immutable after packing; share it freely between threads.
class PackedWeight {
 public:
  PackedWeight() = default;
  // Packs (and, for kBF16, rounds to nearest even) `w` [m, k].
  static PackedWeight Pack(const float* w, int64_t m, int64_t k, WeightStorage storage);

  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  int64_t panels() const { return (m_ + kPanelCols - 1) / kPanelCols; }
  WeightStorage storage() const { return storage_; }
  bool empty() const { return data_ == nullptr; }
  // Bytes of packed storage.
  int64_t bytes() const;
  // Start of panel p (float or uint16 bf16 bits, by storage()).
  const void* panel(int64_t p) const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  int64_t m_ = 0, k_ = 0;
  WeightStorage storage_ = WeightStorage::kF32;
  std::unique_ptr<void, Free> data_;
};

// Rounds each of x[0, n) to the nearest bf16 (ties to even), kept as f32: what kBF16 storage
// does to a weight.
void RoundToBf16InPlace(float* x, int64_t n);

// out[n, m] = x[n, k] · wᵀ (+ bias[m], added after the sum). `threads` > 0 splits the panels
// over that many OpenMP threads (small calls run on the caller's thread); the result never
// depends on it.
void Gemm(const float* x, int64_t n, const PackedWeight& w, const float* bias, float* out,
          int threads);

// The SIMD target the dispatcher chose on this machine (e.g. "AVX2"), for logs and benches.
std::string_view GemmTarget();
// For tests: the targets compiled in that this machine runs (best first), and running every
// later call on one of them (an index into that list; -1: back to the best). Not thread-safe.
std::vector<std::string> GemmTargets();
void ForceGemmTarget(int index);

}  // namespace tandem::kernels::cpu
