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
// Stored weights (f32, bf16, q8_0, q4_0, q4_1): w[o, j] above is the f32 value
// ref::Dequantize (tandem/kernels/ref/dequant.h) gives the stored element — bf16 widened exactly,
// q8_0 d * q, q4_0 d * (nibble - 8), q4_1 (d * nibble) + m (one f32 multiply, then one add, never
// fused) — so Gemm on any storage is bit-identical to Gemm on an f32 PackedWeight of the
// dequantized matrix. Only the bytes streamed differ.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"

namespace tandem::kernels::cpu {

// Output columns (weight rows) per panel.
inline constexpr int64_t kPanelCols = 16;
// Gemm on quantized weights streams the quantized panel (dequantizing in registers) for n up to
// this many rows, and dequantizes each panel once into an f32 buffer for more (see Gemm).
inline constexpr int64_t kGemmStreamRows = 8;

// The storage a name asks for: "f32" | "bf16" | "q8_0" | "q4_0" | "q4_1"; INVALID_ARGUMENT naming
// the value otherwise (f16 is a DType but not a storage).
StatusOr<DType> ParseWeightStorage(std::string_view name);

// True for the DTypes a PackedWeight can store: f32, bf16, q8_0, q4_0, q4_1 (not f16).
bool IsWeightStorage(DType d);

// A weight matrix w[m, k] (row-major, one output per row: the PyTorch Linear layout) repacked
// into ceil(m / 16) panels of 16 weight rows ("columns" of the output); rows past m are zero.
// Panel p covers weight rows 16p .. 16p + 15 (column c = row - 16p), over all of k:
//
//   f32 / bf16: k-major, element (j, c) at j * 16 + c (4 or 2 bytes each).
//   q8_0 / q4_0 / q4_1: k / 32 blocks in increasing j, each 16 × the GGUF block's bytes
//     (544 / 288 / 320), every scale the GGUF block of (row, block) holds:
//       q8_0: f16 d[16]; int8 q[32][16]           q[jj][c] = element (32b + jj, c)
//       q4_0: f16 d[16]; uint8 qs[16][16]         qs[jj][c] = element (32b + jj, c) in the low
//       q4_1: f16 d[16]; f16 m[16]; uint8 qs[16][16]   nibble, (32b + jj + 16, c) in the high one
//     so one SIMD load gives consecutive columns of one k index, and the bytes streamed equal
//     the GGUF file's.
//
// Immutable after packing; share it freely between threads.
class PackedWeight {
 public:
  PackedWeight() = default;
  // Packs `w` [m, k] of type `src_dtype` (rows of GGUF blocks for the q types; any DType) into
  // `storage`. When src_dtype == storage and it is quantized, the blocks are taken as they are
  // (no requantization: GGUF weights stay what the file holds). Otherwise each row is widened
  // with ref::Dequantize and stored: f32 as is, bf16 rounded to nearest even, q types through
  // ref::Quantize. INVALID_ARGUMENT naming m, k and the dtype when the storage is not one of
  // IsWeightStorage, src_dtype is unknown, k is not a multiple of 32 for a quantized src or
  // storage, or m, k < 0.
  static StatusOr<PackedWeight> Pack(const void* w, DType src_dtype, int64_t m, int64_t k,
                                     DType storage);
  // The same from f32. Aborts on the errors above (the caller's invariant: storage f32 or bf16
  // always packs; q types need k % 32 == 0).
  static PackedWeight Pack(const float* w, int64_t m, int64_t k, DType storage);

  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  int64_t panels() const { return (m_ + kPanelCols - 1) / kPanelCols; }
  DType storage() const { return storage_; }
  bool empty() const { return data_ == nullptr; }
  // Bytes of one panel and of the whole packed storage.
  int64_t panel_bytes() const;
  int64_t bytes() const { return panels() * panel_bytes(); }
  // Start of panel p (layout above, by storage()).
  const void* panel(int64_t p) const;
  // out[0, k) = the f32 value of weight row r (0 <= r < m): exactly ref::Dequantize of what is
  // stored (for an embedding lookup from a tied LM head).
  void Row(int64_t r, float* out) const;

 private:
  struct Free {
    void operator()(void* p) const;
  };
  int64_t m_ = 0, k_ = 0;
  DType storage_ = DType::kF32;
  std::unique_ptr<void, Free> data_;
};

// out[n, m] = x[n, k] · wᵀ (+ bias[m], added after the sum). `threads` > 0 splits the panels
// over that many OpenMP threads (small calls run on the caller's thread); the result never
// depends on it (calls of at least 1M multiply-adds or 256 KiB of weights go parallel).
// Quantized weights: up to kGemmStreamRows rows are computed straight from the quantized panel,
// each weight vector widened in registers and used for every row of the tile (one row takes
// four panels at a time, for four independent fma chains); more rows widen each panel once
// into a per-thread f32 buffer and run the f32 kernel over it. Same bits either way.
void Gemm(const float* x, int64_t n, const PackedWeight& w, const float* bias, float* out,
          int threads);

// One matrix of a GemmMany call: out[n, w->m()] = x · wᵀ (+ bias).
struct GemmOutput {
  const PackedWeight* w;
  const float* bias;  // or nullptr
  float* out;
};

// Several matrices over the same x (every w->k() equal): Gemm of each, in one parallel region
// whose threads split the panels of all of them (q, k and v of a layer, or gate and up, then
// cost one barrier, and the small k / v projections no longer run on one thread). Every output
// has exactly the bits Gemm gives it.
void GemmMany(const float* x, int64_t n, std::span<const GemmOutput> outputs, int threads);

// The SIMD target the dispatcher chose on this machine (e.g. "AVX2"), for logs and benches.
std::string_view GemmTarget();
// For tests: the targets compiled in that this machine runs (best first), and running every
// later call on one of them (an index into that list; -1: back to the best). Not thread-safe.
std::vector<std::string> GemmTargets();
void ForceGemmTarget(int index);

}  // namespace tandem::kernels::cpu
