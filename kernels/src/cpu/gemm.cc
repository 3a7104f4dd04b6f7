// The panel GEMM (see gemm.h for its arithmetic contract), compiled once per SIMD target by
// Highway and chosen at run time.
//
// Work: threads take contiguous ranges of panels; for one panel the rows go by in tiles of up to
// kRowTile, each tile keeping kRowTile x (16 / lanes) accumulators in registers over all of k.
// The panel (k x 16 weights) stays in L1/L2 while every row tile reads it, so the weights stream
// from memory once per call; x is re-read from cache. A tile of fewer rows runs the same
// per-element sequence, so tiling never changes a result.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/gemm.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
//
#include "hwy/highway.h"
#include "tandem/kernels/cpu/gemm.h"

#include <cmath>
#include <cstring>

HWY_BEFORE_NAMESPACE();
namespace tandem::kernels::cpu {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int64_t kRowTile = 6;

inline float Bf16ToF32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Targets whose MulAdd is not one fused operation per lane (no FMA unit): every lane goes
// through std::fma instead, so these targets keep the contract too.
#undef TANDEM_GEMM_SCALAR
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128 || HWY_TARGET == HWY_SSSE3 || \
    HWY_TARGET == HWY_SSE4
#define TANDEM_GEMM_SCALAR 1
#else
#define TANDEM_GEMM_SCALAR 0
#endif

#if TANDEM_GEMM_SCALAR

template <typename W>
void PanelRows(const float* x, int64_t rows, int64_t k, const W* panel, int64_t cols,
               const float* bias, float* out, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    float acc[kPanelCols] = {};
    const float* xr = x + r * k;
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t c = 0; c < kPanelCols; ++c) {
        float wv;
        if constexpr (sizeof(W) == 2) {
          wv = Bf16ToF32(panel[j * kPanelCols + c]);
        } else {
          wv = panel[j * kPanelCols + c];
        }
        acc[c] = std::fma(xr[j], wv, acc[c]);
      }
    }
    for (int64_t c = 0; c < cols; ++c) out[r * ldo + c] = bias ? acc[c] + bias[c] : acc[c];
  }
}

#else

using D = hn::CappedTag<float, kPanelCols>;
constexpr int64_t kLanes = HWY_MIN(kPanelCols, HWY_LANES(float));
constexpr int64_t kVecs = kPanelCols / kLanes;  // vectors per panel row

template <typename W>
HWY_INLINE hn::Vec<D> LoadW(D d, const W* p) {
  if constexpr (sizeof(W) == 2) {
    const hn::RebindToUnsigned<D> du;
    const hn::Rebind<uint16_t, D> du16;
    const auto wide = hn::PromoteTo(du, hn::LoadU(du16, p));
    return hn::BitCast(d, hn::ShiftLeft<16>(wide));
  } else {
    return hn::LoadU(d, p);
  }
}

// R rows of x (row stride k) times one panel: out[r, c] for c < cols.
template <int R, typename W>
HWY_NOINLINE void Tile(const float* x, int64_t k, const W* panel, int64_t cols, const float* bias,
                       float* out, int64_t ldo) {
  const D d;
  hn::Vec<D> acc[R][kVecs];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::Zero(d);
  }
  for (int64_t j = 0; j < k; ++j) {
    const W* wj = panel + j * kPanelCols;
    hn::Vec<D> w[kVecs];
    for (int v = 0; v < kVecs; ++v) w[v] = LoadW(d, wj + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const auto xv = hn::Set(d, x[r * k + j]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::MulAdd(xv, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r) {
    HWY_ALIGN float row[kPanelCols];
    for (int v = 0; v < kVecs; ++v) hn::Store(acc[r][v], d, row + v * kLanes);
    float* o = out + r * ldo;
    if (bias != nullptr) {
      for (int64_t c = 0; c < cols; ++c) o[c] = row[c] + bias[c];
    } else {
      std::memcpy(o, row, static_cast<size_t>(cols) * sizeof(float));
    }
  }
}

template <typename W>
void PanelRows(const float* x, int64_t rows, int64_t k, const W* panel, int64_t cols,
               const float* bias, float* out, int64_t ldo) {
  int64_t r = 0;
  for (; r + kRowTile <= rows; r += kRowTile) {
    Tile<kRowTile>(x + r * k, k, panel, cols, bias, out + r * ldo, ldo);
  }
  const float* xr = x + r * k;
  float* o = out + r * ldo;
  switch (rows - r) {
    case 5:
      return Tile<5>(xr, k, panel, cols, bias, o, ldo);
    case 4:
      return Tile<4>(xr, k, panel, cols, bias, o, ldo);
    case 3:
      return Tile<3>(xr, k, panel, cols, bias, o, ldo);
    case 2:
      return Tile<2>(xr, k, panel, cols, bias, o, ldo);
    case 1:
      return Tile<1>(xr, k, panel, cols, bias, o, ldo);
    default:
      return;
  }
}

#endif  // TANDEM_GEMM_SCALAR

// Panels [p0, p1) of w for all n rows.
template <typename W>
void Panels(const float* x, int64_t n, int64_t k, const W* packed, int64_t m, int64_t p0,
            int64_t p1, const float* bias, float* out) {
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c0 = p * kPanelCols;
    const int64_t cols = HWY_MIN(kPanelCols, m - c0);
    PanelRows(x, n, k, packed + p * k * kPanelCols, cols, bias ? bias + c0 : nullptr, out + c0, m);
  }
}

void PanelsF32(const float* x, int64_t n, int64_t k, const void* packed, int64_t m, int64_t p0,
               int64_t p1, const float* bias, float* out) {
  Panels(x, n, k, static_cast<const float*>(packed), m, p0, p1, bias, out);
}

void PanelsBF16(const float* x, int64_t n, int64_t k, const void* packed, int64_t m, int64_t p0,
                int64_t p1, const float* bias, float* out) {
  Panels(x, n, k, static_cast<const uint16_t*>(packed), m, p0, p1, bias, out);
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace tandem::kernels::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

#include <omp.h>

#include "hwy/aligned_allocator.h"

#include <algorithm>
#include <cstdlib>

namespace tandem::kernels::cpu {

HWY_EXPORT(PanelsF32);
HWY_EXPORT(PanelsBF16);
HWY_EXPORT(TargetName);

namespace {

// Below this many multiply-adds a call runs on the calling thread: a parallel region's barrier
// costs more than the work (far more when other processes hold the cores).
constexpr double kMinParallelMacs = 1 << 20;

uint16_t RoundToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

void RoundToBf16InPlace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(RoundToBf16(x[i])) << 16;
    std::memcpy(&x[i], &u, sizeof(u));
  }
}

std::string_view WeightStorageName(WeightStorage s) {
  return s == WeightStorage::kBF16 ? "bf16" : "f32";
}

StatusOr<WeightStorage> ParseWeightStorage(std::string_view name) {
  if (name == "f32") return WeightStorage::kF32;
  if (name == "bf16") return WeightStorage::kBF16;
  return InvalidArgumentError("weights: unknown storage '{}' (expected f32 or bf16)", name);
}

void PackedWeight::Free::operator()(void* p) const { hwy::FreeAlignedBytes(p, nullptr, nullptr); }

int64_t PackedWeight::bytes() const {
  const int64_t elem = storage_ == WeightStorage::kBF16 ? 2 : 4;
  return panels() * k_ * kPanelCols * elem;
}

const void* PackedWeight::panel(int64_t p) const {
  const int64_t elem = storage_ == WeightStorage::kBF16 ? 2 : 4;
  return static_cast<const char*>(data_.get()) + p * k_ * kPanelCols * elem;
}

PackedWeight PackedWeight::Pack(const float* w, int64_t m, int64_t k, WeightStorage storage) {
  PackedWeight pw;
  pw.m_ = m;
  pw.k_ = k;
  pw.storage_ = storage;
  const int64_t panels = pw.panels();
  pw.data_.reset(hwy::AllocateAlignedBytes(static_cast<size_t>(std::max<int64_t>(pw.bytes(), 64)),
                                           nullptr, nullptr));
  for (int64_t p = 0; p < panels; ++p) {
    for (int64_t j = 0; j < k; ++j) {
      for (int64_t c = 0; c < kPanelCols; ++c) {
        const int64_t row = p * kPanelCols + c;
        const float v = row < m ? w[row * k + j] : 0.0f;
        const int64_t at = (p * k + j) * kPanelCols + c;
        if (storage == WeightStorage::kBF16) {
          static_cast<uint16_t*>(pw.data_.get())[at] = RoundToBf16(v);
        } else {
          static_cast<float*>(pw.data_.get())[at] = v;
        }
      }
    }
  }
  return pw;
}

void Gemm(const float* x, int64_t n, const PackedWeight& w, const float* bias, float* out,
          int threads) {
  const int64_t m = w.m(), k = w.k(), panels = w.panels();
  if (n <= 0 || m <= 0) return;
  const void* base = w.panel(0);
  auto* fn = w.storage() == WeightStorage::kBF16 ? HWY_DYNAMIC_DISPATCH(PanelsBF16)
                                                 : HWY_DYNAMIC_DISPATCH(PanelsF32);
  const bool parallel = threads > 1 && static_cast<double>(n) * k * m > kMinParallelMacs;
  if (!parallel) return fn(x, n, k, base, m, 0, panels, bias, out);
    // Contiguous panel ranges per thread: which thread computes a panel changes nothing.
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t p0 = panels * t / nt, p1 = panels * (t + 1) / nt;
    fn(x, n, k, base, m, p0, p1, bias, out);
  }
}

std::string_view GemmTarget() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

std::vector<std::string> GemmTargets() {
  std::vector<std::string> names;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) names.push_back(hwy::TargetName(t));
  return names;
}

void ForceGemmTarget(int index) {
  hwy::SetSupportedTargetsForTest(0);
  if (index < 0) return;
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  if (index < static_cast<int>(targets.size())) hwy::SetSupportedTargetsForTest(targets[index]);
}

}  // namespace tandem::kernels::cpu

#endif  // HWY_ONCE
