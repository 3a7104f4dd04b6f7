// The panel GEMM (see gemm.h for its arithmetic contract and the panel layouts), compiled once
// per SIMD target by Highway and chosen at run time.
//
// Work: threads take contiguous ranges of panels; for one panel the rows go by in tiles of up to
// kRowTile, each tile keeping kRowTile x (16 / lanes) accumulators in registers over all of k.
// The panel (k x 16 weights) stays in L1/L2 while every row tile reads it, so the weights stream
// from memory once per call; x is re-read from cache. A tile of fewer rows runs the same
// per-element sequence, so tiling never changes a result.
//
// Quantized panels: for up to kGemmStreamRows rows each row tile reads the quantized panel and
// widens every 16-column vector in registers (f16 scale -> f32, int -> f32, one multiply, for
// q4_1 one add) right before its fmas; for more rows each panel is first widened once into a
// per-thread f32 buffer (k x 16) that the f32 tiles then read. Both widen with the operations
// ref::Dequantize uses, so both feed the same f32 values into the same fma chains.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "src/cpu/gemm.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
//
#include "hwy/aligned_allocator.h"
#include "hwy/highway.h"
#include "tandem/kernels/cpu/gemm.h"
#include "tandem/kernels/ref/dequant.h"

#include <cmath>
#include <cstring>
#include <utility>

#ifndef TANDEM_GEMM_QUANT_CONSTANTS
#define TANDEM_GEMM_QUANT_CONSTANTS
namespace tandem::kernels::cpu {
// Bytes of one 32-k block of a 16-column quantized panel, and where its quants start.
constexpr int64_t PanelBlockBytes(DType q) {
  return q == DType::kQ8_0 ? 544 : q == DType::kQ4_0 ? 288 : 320;
}
constexpr int64_t PanelQuantOffset(DType q) { return q == DType::kQ4_1 ? 64 : 32; }
}  // namespace tandem::kernels::cpu
#endif

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

inline uint16_t Load16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// A per-thread f32 buffer of at least `n` floats (aligned), reused across calls.
inline float* ThreadBuffer(size_t n) {
  thread_local hwy::AlignedFreeUniquePtr<float[]> buf;
  thread_local size_t cap = 0;
  if (cap < n) {
    buf = hwy::AllocateAligned<float>(n);
    cap = n;
  }
  return buf.get();
}

// Widens a quantized panel (k / 32 blocks, layout in gemm.h) to f32 buf[j * 16 + c], with the
// scalar operations of ref::Dequantize.
template <DType Q>
void DequantPanelScalar(const uint8_t* panel, int64_t k, float* buf) {
  constexpr int64_t kBB = PanelBlockBytes(Q), kQo = PanelQuantOffset(Q);
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    const uint8_t* blk = panel + b * kBB;
    float* o = buf + b * kQuantBlock * kPanelCols;
    for (int64_t c = 0; c < kPanelCols; ++c) {
      const float d = ref::HalfToFloat(Load16(blk + 2 * c));
      if constexpr (Q == DType::kQ8_0) {
        for (int64_t j = 0; j < kQuantBlock; ++j) {
          o[j * kPanelCols + c] =
              d * static_cast<float>(static_cast<int8_t>(blk[kQo + j * kPanelCols + c]));
        }
      } else {
        const float mn = Q == DType::kQ4_1 ? ref::HalfToFloat(Load16(blk + 32 + 2 * c)) : 0.0f;
        for (int64_t j = 0; j < 16; ++j) {
          const uint8_t q = blk[kQo + j * kPanelCols + c];
          if constexpr (Q == DType::kQ4_0) {
            o[j * kPanelCols + c] = d * static_cast<float>((q & 0xf) - 8);
            o[(j + 16) * kPanelCols + c] = d * static_cast<float>((q >> 4) - 8);
          } else {
            const float lo = d * static_cast<float>(q & 0xf);
            const float hi = d * static_cast<float>(q >> 4);
            o[j * kPanelCols + c] = lo + mn;
            o[(j + 16) * kPanelCols + c] = hi + mn;
          }
        }
      }
    }
  }
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
               const float* bias, float* out, int64_t ldo, const void*, int64_t) {
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

// Scalar targets always widen the panel first.
template <DType Q>
void QuantPanels(const float* x, int64_t n, int64_t k, const uint8_t* packed, int64_t m, int64_t p0,
                 int64_t p1, const float* bias, float* out) {
  const int64_t stride = k / kQuantBlock * PanelBlockBytes(Q);
  float* buf = ThreadBuffer(static_cast<size_t>(k * kPanelCols));
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t c0 = p * kPanelCols;
    DequantPanelScalar<Q>(packed + p * stride, k, buf);
    PanelRows(x, n, k, static_cast<const float*>(buf), HWY_MIN(kPanelCols, m - c0),
              bias ? bias + c0 : nullptr, out + c0, m, nullptr, 0);
  }
}

#else

using D = hn::CappedTag<float, kPanelCols>;
using DI = hn::RebindToSigned<D>;
using V = hn::Vec<D>;
constexpr int64_t kLanes = HWY_MIN(kPanelCols, HWY_LANES(float));
constexpr int64_t kVecs = kPanelCols / kLanes;  // vectors per panel row

template <typename W>
HWY_INLINE V LoadW(D d, const W* p) {
  if constexpr (sizeof(W) == 2) {
    const hn::RebindToUnsigned<D> du;
    const hn::Rebind<uint16_t, D> du16;
    const auto wide = hn::PromoteTo(du, hn::LoadU(du16, p));
    return hn::BitCast(d, hn::ShiftLeft<16>(wide));
  } else {
    return hn::LoadU(d, p);
  }
}

// The f16 scales of columns [v * kLanes, (v + 1) * kLanes) at `p`, exactly widened.
HWY_INLINE V LoadHalves(D d, const uint8_t* p, int v) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p) + v * kLanes));
}

// Weight vector (columns of vector v) of k index j of one 32-k block `blk` whose widened scales
// are dv (and mins mv): ref::Dequantize's operations, lane by lane.
template <DType Q, int J>
HWY_INLINE V QuantW(D d, const uint8_t* blk, int v, V dv, V mv) {
  const DI di;
  constexpr int64_t kQo = PanelQuantOffset(Q);
  if constexpr (Q == DType::kQ8_0) {
    const hn::Rebind<int8_t, D> d8;
    const int8_t* q = reinterpret_cast<const int8_t*>(blk + kQo + J * kPanelCols) + v * kLanes;
    return hn::Mul(dv, hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, q))));
  } else {
    (void)mv;
    const hn::Rebind<uint8_t, D> du8;
    const uint8_t* q = blk + kQo + (J & 15) * kPanelCols + v * kLanes;
    const auto bytes = hn::PromoteTo(di, hn::LoadU(du8, q));
    const auto nib = J < 16 ? hn::And(bytes, hn::Set(di, 0xf)) : hn::ShiftRight<4>(bytes);
    if constexpr (Q == DType::kQ4_0) {
      return hn::Mul(dv, hn::ConvertTo(d, hn::Sub(nib, hn::Set(di, 8))));
    } else {
      return hn::Add(hn::Mul(dv, hn::ConvertTo(d, nib)), mv);
    }
  }
}

// Writes one row of accumulators to out (+ bias), columns < cols.
HWY_INLINE void StoreRow(D d, const V (&acc)[kVecs], int64_t cols, const float* bias, float* o) {
  HWY_ALIGN float row[kPanelCols];
  for (int v = 0; v < kVecs; ++v) hn::Store(acc[v], d, row + v * kLanes);
  if (bias != nullptr) {
    for (int64_t c = 0; c < cols; ++c) o[c] = row[c] + bias[c];
  } else {
    std::memcpy(o, row, static_cast<size_t>(cols) * sizeof(float));
  }
}

template <int R>
HWY_INLINE void StoreTile(D d, const V (&acc)[R][kVecs], int64_t cols, const float* bias,
                          float* out, int64_t ldo) {
  for (int r = 0; r < R; ++r) StoreRow(d, acc[r], cols, bias, out + r * ldo);
}

// Bytes [pf, pf + pf_bytes) that a tile brings into cache while it computes, spread evenly over
// its k steps: the next panel, which would otherwise come from memory only when its first tile
// asks for it (see PanelRows). A hint only; it changes no value.
struct Ahead {
  const uint8_t* pf;
  int64_t pf_bytes;
};

// Steps a prefetch cursor over `ahead` in `steps` equal strides (16.16 fixed point).
class AheadCursor {
 public:
  AheadCursor(Ahead a, int64_t steps) : p_(a.pf), step_((a.pf_bytes << 16) / HWY_MAX(steps, 1)) {}
  HWY_INLINE void Next() {
    if (step_ == 0) return;  // nothing ahead (one tile, tile 0, the last panel): no hint at all
    // Into L2 (the current panel lives there too; L1 holds the tile's working set).
    __builtin_prefetch(p_ + (pos_ >> 16), /*rw=*/0, /*locality=*/2);
    pos_ += step_;
  }

 private:
  const uint8_t* p_;
  int64_t step_, pos_ = 0;
};

// R rows of x (row stride k) times one panel: out[r, c] for c < cols.
template <int R, typename W>
HWY_NOINLINE void Tile(const float* x, int64_t k, const W* panel, int64_t cols, const float* bias,
                       float* out, int64_t ldo, Ahead ahead) {
  const D d;
  V acc[R][kVecs];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::Zero(d);
  }
  AheadCursor pf(ahead, k);
  for (int64_t j = 0; j < k; ++j) {
    pf.Next();
    const W* wj = panel + j * kPanelCols;
    V w[kVecs];
    for (int v = 0; v < kVecs; ++v) w[v] = LoadW(d, wj + v * kLanes);
    for (int r = 0; r < R; ++r) {
      const auto xv = hn::Set(d, x[r * k + j]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::MulAdd(xv, w[v], acc[r][v]);
    }
  }
  StoreTile<R>(d, acc, cols, bias, out, ldo);
}

// One k index J of a quantized block for R rows: widen, then one fma per row and vector.
template <int R, DType Q, int J>
HWY_INLINE void QStep(D d, const float* xb, int64_t k, const uint8_t* blk, const V (&dv)[kVecs],
                      const V (&mv)[kVecs], V (&acc)[R][kVecs]) {
  V w[kVecs];
  for (int v = 0; v < kVecs; ++v) w[v] = QuantW<Q, J>(d, blk, v, dv[v], mv[v]);
  for (int r = 0; r < R; ++r) {
    const auto xv = hn::Set(d, xb[r * k + J]);
    for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::MulAdd(xv, w[v], acc[r][v]);
  }
}

template <int R, DType Q, int... J>
HWY_INLINE void QBlock(D d, const float* xb, int64_t k, const uint8_t* blk, const V (&dv)[kVecs],
                       const V (&mv)[kVecs], V (&acc)[R][kVecs], std::integer_sequence<int, J...>) {
  (QStep<R, Q, J>(d, xb, k, blk, dv, mv, acc), ...);  // J in increasing order
}

// R rows of x times one quantized panel, widening each weight vector in registers.
template <int R, DType Q>
HWY_NOINLINE void QTile(const float* x, int64_t k, const uint8_t* panel, int64_t cols,
                        const float* bias, float* out, int64_t ldo, Ahead ahead) {
  const D d;
  V acc[R][kVecs];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < kVecs; ++v) acc[r][v] = hn::Zero(d);
  }
  constexpr int64_t kBB = PanelBlockBytes(Q);
  // One prefetch per cache line of a block: enough for one tile to bring in a whole next panel.
  constexpr int kPfPerBlock = (kBB + 63) / 64;
  AheadCursor pf(ahead, k / kQuantBlock * kPfPerBlock);
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    for (int i = 0; i < kPfPerBlock; ++i) pf.Next();
    const uint8_t* blk = panel + b * kBB;
    V dv[kVecs], mv[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      dv[v] = LoadHalves(d, blk, v);
      mv[v] = Q == DType::kQ4_1 ? LoadHalves(d, blk + 32, v) : hn::Zero(d);
    }
    QBlock<R, Q>(d, x + b * kQuantBlock, k, blk, dv, mv, acc,
                 std::make_integer_sequence<int, kQuantBlock>());
  }
  StoreTile<R>(d, acc, cols, bias, out, ldo);
}

// One row of x times P adjacent quantized panels (P independent fma chains per vector, where
// one panel alone would wait on each fma's latency): what a single decode row runs.
template <DType Q, int P, int J>
HWY_INLINE void QStepP(D d, float xj, const uint8_t* const (&blk)[P], const V (&dv)[P][kVecs],
                       const V (&mv)[P][kVecs], V (&acc)[P][kVecs]) {
  const auto xv = hn::Set(d, xj);
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < kVecs; ++v) {
      acc[p][v] = hn::MulAdd(xv, QuantW<Q, J>(d, blk[p], v, dv[p][v], mv[p][v]), acc[p][v]);
    }
  }
}

template <DType Q, int P, int... J>
HWY_INLINE void QBlockP(D d, const float* xb, const uint8_t* const (&blk)[P],
                        const V (&dv)[P][kVecs], const V (&mv)[P][kVecs], V (&acc)[P][kVecs],
                        std::integer_sequence<int, J...>) {
  (QStepP<Q, P, J>(d, xb[J], blk, dv, mv, acc), ...);  // J in increasing order
}

template <DType Q, int P>
HWY_NOINLINE void QRowPanels(const float* x, int64_t k, const uint8_t* panel, int64_t stride,
                             int64_t cols_last, const float* bias, float* out) {
  const D d;
  V acc[P][kVecs];
  for (int p = 0; p < P; ++p) {
    for (int v = 0; v < kVecs; ++v) acc[p][v] = hn::Zero(d);
  }
  constexpr int64_t kBB = PanelBlockBytes(Q);
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    const uint8_t* blk[P];
    V dv[P][kVecs], mv[P][kVecs];
    for (int p = 0; p < P; ++p) {
      blk[p] = panel + p * stride + b * kBB;
      for (int v = 0; v < kVecs; ++v) {
        dv[p][v] = LoadHalves(d, blk[p], v);
        mv[p][v] = Q == DType::kQ4_1 ? LoadHalves(d, blk[p] + 32, v) : hn::Zero(d);
      }
    }
    QBlockP<Q, P>(d, x + b * kQuantBlock, blk, dv, mv, acc,
                  std::make_integer_sequence<int, kQuantBlock>());
  }
  for (int p = 0; p < P; ++p) {
    StoreRow(d, acc[p], p == P - 1 ? cols_last : kPanelCols, bias ? bias + p * kPanelCols : nullptr,
             out + p * kPanelCols);
  }
}

// Quantized panel widened to f32 buf[j * 16 + c] (aligned), in registers then stored.
template <DType Q>
void DequantPanel(const uint8_t* panel, int64_t k, float* buf) {
  const D d;
  const DI di;
  constexpr int64_t kBB = PanelBlockBytes(Q), kQo = PanelQuantOffset(Q);
  for (int64_t b = 0; b < k / kQuantBlock; ++b) {
    const uint8_t* blk = panel + b * kBB;
    float* o = buf + b * kQuantBlock * kPanelCols;
    for (int v = 0; v < kVecs; ++v) {
      const V dv = LoadHalves(d, blk, v);
      if constexpr (Q == DType::kQ8_0) {
        const hn::Rebind<int8_t, D> d8;
        const int8_t* q = reinterpret_cast<const int8_t*>(blk + kQo) + v * kLanes;
        for (int64_t j = 0; j < kQuantBlock; ++j) {
          const auto qv = hn::PromoteTo(di, hn::LoadU(d8, q + j * kPanelCols));
          hn::StoreU(hn::Mul(dv, hn::ConvertTo(d, qv)), d, o + j * kPanelCols + v * kLanes);
        }
      } else {
        const hn::Rebind<uint8_t, D> du8;
        const uint8_t* q = blk + kQo + v * kLanes;
        const V mv = Q == DType::kQ4_1 ? LoadHalves(d, blk + 32, v) : hn::Zero(d);
        for (int64_t j = 0; j < 16; ++j) {
          const auto bytes = hn::PromoteTo(di, hn::LoadU(du8, q + j * kPanelCols));
          const auto lo = hn::And(bytes, hn::Set(di, 0xf)), hi = hn::ShiftRight<4>(bytes);
          V wlo, whi;
          if constexpr (Q == DType::kQ4_0) {
            wlo = hn::Mul(dv, hn::ConvertTo(d, hn::Sub(lo, hn::Set(di, 8))));
            whi = hn::Mul(dv, hn::ConvertTo(d, hn::Sub(hi, hn::Set(di, 8))));
          } else {
            wlo = hn::Add(hn::Mul(dv, hn::ConvertTo(d, lo)), mv);
            whi = hn::Add(hn::Mul(dv, hn::ConvertTo(d, hi)), mv);
          }
          hn::StoreU(wlo, d, o + j * kPanelCols + v * kLanes);
          hn::StoreU(whi, d, o + (j + 16) * kPanelCols + v * kLanes);
        }
      }
    }
  }
}

// Tile<R> over f32/bf16 weights (Q == kF32) or QTile<R, Q> over a quantized panel (W = uint8_t).
template <int R, typename W, DType Q>
constexpr auto TileFor() {
  if constexpr (Q == DType::kF32) {
    return &Tile<R, W>;
  } else {
    return &QTile<R, Q>;
  }
}

// The rows in ceil(rows / kRowTile) tiles of near-equal size (8 rows: 4 + 4, not 6 + 2): a tile
// of under four rows has too few independent fma chains to hide their latency.
//
// `next` (next_bytes long; may be null) is the panel this thread computes next. The first tile
// streams this panel from memory and the later ones re-read it from cache, so those later tiles
// prefetch `next` between them: without it every panel's first tile waits on memory (a fifth of
// the time of a 32-row decode step). One tile alone streams panels in order, which the hardware
// prefetcher follows by itself.
template <typename W, DType Q = DType::kF32>
void PanelRows(const float* x, int64_t rows, int64_t k, const W* panel, int64_t cols,
               const float* bias, float* out, int64_t ldo, const void* next, int64_t next_bytes) {
  static_assert(kRowTile == 6, "one tile function per size below");
  static constexpr decltype(TileFor<1, W, Q>()) kTiles[] = {TileFor<1, W, Q>(), TileFor<2, W, Q>(),
                                                            TileFor<3, W, Q>(), TileFor<4, W, Q>(),
                                                            TileFor<5, W, Q>(), TileFor<6, W, Q>()};
  const int64_t tiles = (rows + kRowTile - 1) / kRowTile;
  const auto* pf = static_cast<const uint8_t*>(next != nullptr ? next : panel);
  // Over 32 bytes of `next` per k step of a tile (f32 weights, two tiles) the call is bound by
  // memory anyway, and the hints only crowd out the current panel's loads.
  if (next == nullptr || tiles < 2 || next_bytes > 32 * k * (tiles - 1)) next_bytes = 0;
  for (int64_t t = 0, r = 0; t < tiles; ++t) {
    const int64_t left = tiles - t, size = (rows - r + left - 1) / left;
    // Tiles 1 .. tiles-1 take equal shares of `next`; tile 0 none.
    const int64_t lo = t == 0 ? 0 : next_bytes * (t - 1) / (tiles - 1);
    const int64_t hi = t == 0 ? 0 : next_bytes * t / (tiles - 1);
    kTiles[size - 1](x + r * k, k, panel, cols, bias, out + r * ldo, ldo, Ahead{pf + lo, hi - lo});
    r += size;
  }
}

template <DType Q>
void QuantPanels(const float* x, int64_t n, int64_t k, const uint8_t* packed, int64_t m, int64_t p0,
                 int64_t p1, const float* bias, float* out) {
  const int64_t stride = k / kQuantBlock * PanelBlockBytes(Q);
  float* buf = n > kGemmStreamRows ? ThreadBuffer(static_cast<size_t>(k * kPanelCols)) : nullptr;
  int64_t p = p0;
  if (n == 1) {  // four (then one) panels at a time
    for (; p + 4 <= p1; p += 4) {
      const int64_t c0 = p * kPanelCols;
      QRowPanels<Q, 4>(x, k, packed + p * stride, stride, HWY_MIN(kPanelCols, m - c0 - 48),
                       bias ? bias + c0 : nullptr, out + c0);
    }
  }
  for (; p < p1; ++p) {
    const int64_t c0 = p * kPanelCols;
    const int64_t cols = HWY_MIN(kPanelCols, m - c0);
    const uint8_t* panel = packed + p * stride;
    const float* b = bias ? bias + c0 : nullptr;
    const uint8_t* next = p + 1 < p1 ? panel + stride : nullptr;
    if (buf == nullptr) {
      PanelRows<uint8_t, Q>(x, n, k, panel, cols, b, out + c0, m, next, stride);
    } else {
      DequantPanel<Q>(panel, k, buf);
      PanelRows(x, n, k, static_cast<const float*>(buf), cols, b, out + c0, m, next, stride);
    }
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
    const W* panel = packed + p * k * kPanelCols;
    PanelRows(x, n, k, panel, cols, bias ? bias + c0 : nullptr, out + c0, m,
              p + 1 < p1 ? panel + k * kPanelCols : nullptr,
              k * kPanelCols * static_cast<int64_t>(sizeof(W)));
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

void PanelsQ8_0(const float* x, int64_t n, int64_t k, const void* packed, int64_t m, int64_t p0,
                int64_t p1, const float* bias, float* out) {
  QuantPanels<DType::kQ8_0>(x, n, k, static_cast<const uint8_t*>(packed), m, p0, p1, bias, out);
}

void PanelsQ4_0(const float* x, int64_t n, int64_t k, const void* packed, int64_t m, int64_t p0,
                int64_t p1, const float* bias, float* out) {
  QuantPanels<DType::kQ4_0>(x, n, k, static_cast<const uint8_t*>(packed), m, p0, p1, bias, out);
}

void PanelsQ4_1(const float* x, int64_t n, int64_t k, const void* packed, int64_t m, int64_t p0,
                int64_t p1, const float* bias, float* out) {
  QuantPanels<DType::kQ4_1>(x, n, k, static_cast<const uint8_t*>(packed), m, p0, p1, bias, out);
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace tandem::kernels::cpu
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

#include <omp.h>

#include <algorithm>
#include <cstdlib>

#include "tandem/common/logging.h"

namespace tandem::kernels::cpu {

HWY_EXPORT(PanelsF32);
HWY_EXPORT(PanelsBF16);
HWY_EXPORT(PanelsQ8_0);
HWY_EXPORT(PanelsQ4_0);
HWY_EXPORT(PanelsQ4_1);
HWY_EXPORT(TargetName);

namespace {

// Below this many multiply-adds and weight bytes a call runs on the calling thread: a parallel
// region's barrier costs more than the work (far more when other processes hold the cores).
// The bytes count at decode, where a batch of a few rows is bound by streaming the weights.
constexpr double kMinParallelMacs = 1 << 20;
constexpr int64_t kMinParallelBytes = 256 << 10;

// GGUF row blocks <-> one column of a quantized panel. Block b of the row is GGUF bytes
// g[0, block bytes); the panel block at `blk` holds the same scale(s) at column c and the same
// quant bytes at [jj][c].
void ScatterBlock(DType q, const uint8_t* g, uint8_t* blk, int64_t c) {
  std::memcpy(blk + 2 * c, g, 2);                                  // d
  if (q == DType::kQ4_1) std::memcpy(blk + 32 + 2 * c, g + 2, 2);  // m
  const int64_t qo = PanelQuantOffset(q), nq = q == DType::kQ8_0 ? 32 : 16;
  const int64_t go = q == DType::kQ4_1 ? 4 : 2;
  for (int64_t jj = 0; jj < nq; ++jj) blk[qo + jj * kPanelCols + c] = g[go + jj];
}

void GatherBlock(DType q, const uint8_t* blk, int64_t c, uint8_t* g) {
  std::memcpy(g, blk + 2 * c, 2);
  if (q == DType::kQ4_1) std::memcpy(g + 2, blk + 32 + 2 * c, 2);
  const int64_t qo = PanelQuantOffset(q), nq = q == DType::kQ8_0 ? 32 : 16;
  const int64_t go = q == DType::kQ4_1 ? 4 : 2;
  for (int64_t jj = 0; jj < nq; ++jj) g[go + jj] = blk[qo + jj * kPanelCols + c];
}

}  // namespace

bool IsWeightStorage(DType d) {
  return d == DType::kF32 || d == DType::kBF16 || d == DType::kQ8_0 || d == DType::kQ4_0 ||
         d == DType::kQ4_1;
}

StatusOr<DType> ParseWeightStorage(std::string_view name) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1}) {
    if (name == DTypeName(d)) return d;
  }
  return InvalidArgumentError(
      "weights: unknown storage '{}' (expected f32, bf16, q8_0, q4_0 or q4_1)", name);
}

void PackedWeight::Free::operator()(void* p) const { hwy::FreeAlignedBytes(p, nullptr, nullptr); }

int64_t PackedWeight::panel_bytes() const {
  if (IsQuantized(storage_)) return k_ / kQuantBlock * PanelBlockBytes(storage_);
  return k_ * kPanelCols * static_cast<int64_t>(DTypeSize(storage_));
}

const void* PackedWeight::panel(int64_t p) const {
  return static_cast<const char*>(data_.get()) + p * panel_bytes();
}

StatusOr<PackedWeight> PackedWeight::Pack(const void* w, DType src_dtype, int64_t m, int64_t k,
                                          DType storage) {
  if (!IsWeightStorage(storage)) {
    return InvalidArgumentError(
        "PackedWeight m={} k={}: storage {} ({}) is not one of f32, bf16, q8_0, q4_0, q4_1", m, k,
        DTypeName(storage), static_cast<uint32_t>(storage));
  }
  if (!IsKnownDType(src_dtype)) {
    return InvalidArgumentError("PackedWeight m={} k={}: unknown source dtype ({})", m, k,
                                static_cast<uint32_t>(src_dtype));
  }
  if (m < 0 || k < 0) {
    return InvalidArgumentError("PackedWeight m={} k={} ({}): negative size", m, k,
                                DTypeName(storage));
  }
  for (DType d : {src_dtype, storage}) {
    if (IsQuantized(d) && k % kQuantBlock != 0) {
      return InvalidArgumentError(
          "PackedWeight m={} k={}: k is not a multiple of {}, the block of {}", m, k, kQuantBlock,
          DTypeName(d));
    }
  }
  PackedWeight pw;
  pw.m_ = m;
  pw.k_ = k;
  pw.storage_ = storage;
  const int64_t bytes = pw.bytes();
  pw.data_.reset(hwy::AllocateAlignedBytes(static_cast<size_t>(std::max<int64_t>(bytes, 64)),
                                           nullptr, nullptr));
  auto* data = static_cast<uint8_t*>(pw.data_.get());
  std::memset(data, 0, static_cast<size_t>(bytes));
  const auto* src = static_cast<const uint8_t*>(w);
  const size_t src_row = DTypeBytes(src_dtype, k);
  const int64_t blocks = IsQuantized(storage) ? k / kQuantBlock : 0;
  const int64_t gguf_block = static_cast<int64_t>(DTypeBlockBytes(storage));
  std::vector<float> row(static_cast<size_t>(k));
  std::vector<uint8_t> q(IsQuantized(storage) ? DTypeBytes(storage, k) : 0);
  for (int64_t r = 0; r < m; ++r) {
    const uint8_t* s = src + r * src_row;
    uint8_t* panel = data + r / kPanelCols * pw.panel_bytes();
    const int64_t c = r % kPanelCols;
    if (IsQuantized(storage)) {
      if (src_dtype != storage) {  // the same q type is taken as it is
        ref::Dequantize(src_dtype, s, k, row.data());
        ref::Quantize(storage, row.data(), k, q.data());
        s = q.data();
      }
      for (int64_t b = 0; b < blocks; ++b) {
        ScatterBlock(storage, s + b * gguf_block, panel + b * PanelBlockBytes(storage), c);
      }
      continue;
    }
    ref::Dequantize(src_dtype, s, k, row.data());
    for (int64_t j = 0; j < k; ++j) {
      if (storage == DType::kBF16) {
        reinterpret_cast<uint16_t*>(panel)[j * kPanelCols + c] = ref::FloatToBf16(row[j]);
      } else {
        reinterpret_cast<float*>(panel)[j * kPanelCols + c] = row[j];
      }
    }
  }
  return pw;
}

PackedWeight PackedWeight::Pack(const float* w, int64_t m, int64_t k, DType storage) {
  StatusOr<PackedWeight> pw = Pack(w, DType::kF32, m, k, storage);
  if (!pw.ok()) TLOG_ERROR("{}", pw.status().message());
  TANDEM_CHECK(pw.ok());
  return std::move(pw).value();
}

void PackedWeight::Row(int64_t r, float* out) const {
  TANDEM_CHECK(r >= 0 && r < m_);
  const auto* panel = static_cast<const uint8_t*>(this->panel(r / kPanelCols));
  const int64_t c = r % kPanelCols;
  if (IsQuantized(storage_)) {
    uint8_t g[64];
    for (int64_t b = 0; b < k_ / kQuantBlock; ++b) {
      GatherBlock(storage_, panel + b * PanelBlockBytes(storage_), c, g);
      ref::Dequantize(storage_, g, kQuantBlock, out + b * kQuantBlock);
    }
    return;
  }
  for (int64_t j = 0; j < k_; ++j) {
    out[j] = storage_ == DType::kBF16
                 ? ref::Bf16ToFloat(reinterpret_cast<const uint16_t*>(panel)[j * kPanelCols + c])
                 : reinterpret_cast<const float*>(panel)[j * kPanelCols + c];
  }
}

namespace {

using PanelsFn = void (*)(const float*, int64_t, int64_t, const void*, int64_t, int64_t, int64_t,
                          const float*, float*);

PanelsFn PanelsFor(DType storage) {
  switch (storage) {
    case DType::kBF16:
      return HWY_DYNAMIC_DISPATCH(PanelsBF16);
    case DType::kQ8_0:
      return HWY_DYNAMIC_DISPATCH(PanelsQ8_0);
    case DType::kQ4_0:
      return HWY_DYNAMIC_DISPATCH(PanelsQ4_0);
    case DType::kQ4_1:
      return HWY_DYNAMIC_DISPATCH(PanelsQ4_1);
    default:
      return HWY_DYNAMIC_DISPATCH(PanelsF32);
  }
}

// Panels [q0, q1) of the outputs' panels counted one matrix after another.
void RunPanels(const float* x, int64_t n, std::span<const GemmOutput> outputs, int64_t q0,
               int64_t q1) {
  int64_t base = 0;
  for (const GemmOutput& o : outputs) {
    const int64_t panels = o.w->panels();
    const int64_t p0 = std::max<int64_t>(q0 - base, 0), p1 = std::min<int64_t>(q1 - base, panels);
    if (p0 < p1) {
      PanelsFor(o.w->storage())(x, n, o.w->k(), o.w->panel(0), o.w->m(), p0, p1, o.bias, o.out);
    }
    base += panels;
  }
}

}  // namespace

void GemmMany(const float* x, int64_t n, std::span<const GemmOutput> outputs, int threads) {
  if (n <= 0 || outputs.empty()) return;
  int64_t panels = 0, bytes = 0;
  double macs = 0;
  for (const GemmOutput& o : outputs) {
    TANDEM_CHECK(o.w->k() == outputs[0].w->k());
    if (o.w->m() <= 0) continue;
    panels += o.w->panels();
    bytes += o.w->bytes();
    macs += static_cast<double>(n) * o.w->k() * o.w->m();
  }
  if (panels == 0) return;
  const bool parallel = threads > 1 && (macs > kMinParallelMacs || bytes >= kMinParallelBytes);
  if (!parallel) return RunPanels(x, n, outputs, 0, panels);
    // Contiguous panel ranges per thread: which thread computes a panel changes nothing.
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    RunPanels(x, n, outputs, panels * t / nt, panels * (t + 1) / nt);
  }
}

void Gemm(const float* x, int64_t n, const PackedWeight& w, const float* bias, float* out,
          int threads) {
  const GemmOutput one{&w, bias, out};
  GemmMany(x, n, std::span<const GemmOutput>(&one, 1), threads);
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
