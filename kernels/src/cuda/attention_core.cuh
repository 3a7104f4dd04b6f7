// The tile loop shared by prefill and decode attention: up to kMaxRows query rows of one kv
// head against cached positions in tiles of kTile, with an online softmax. Private to
// tandem_kernels_cuda.
//
// Reduction order (what makes results reproducible and batch-invariant): tiles are aligned to
// absolute positions and visited in increasing order; inside a tile a score is one thread's
// dot product in increasing d, the tile's probability sum is a fixed xor-butterfly, and the
// output accumulates positions t = 0..31 in order. A tile fully masked for a row leaves that
// row's (m, l, o) bit-identical (alpha = exp(0) = 1, p = 0), so which masked tiles a block
// happens to visit never matters.
#pragma once

#include <cmath>

#include "device_utils.cuh"
#include "tandem/kernels/cuda/paged_kv.h"

namespace tandem::cuda::detail {

constexpr int kAttnThreads = 128;  // 4 warps
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kTile = 32;     // positions per tile (one per lane in the softmax)
constexpr int kMaxRows = 16;  // query rows per block

// Shared memory of one block, carved from dynamic shared memory, all fp32.
template <int D>
struct AttnSmem {
  float* q;  // [kMaxRows][D]
  float* k;  // [kTile][D + 1]  (padded: thread t reads row t, no bank conflicts)
  float* v;  // [kTile][D]
  float* s;  // [kMaxRows][kTile]
  float* o;  // [kMaxRows][D]  unnormalized output
  float* m;  // [kMaxRows]     running max (scaled scores)
  float* l;  // [kMaxRows]     running sum of exp(s - m)
  int* pos;  // [kMaxRows]     query position per row, -1 for an unused row

  static constexpr size_t Bytes() {
    return sizeof(float) * (size_t{kMaxRows} * D + size_t{kTile} * (D + 1) + size_t{kTile} * D +
                            size_t{kMaxRows} * kTile + size_t{kMaxRows} * D + 2 * kMaxRows) +
           sizeof(int) * kMaxRows;
  }
  __device__ static AttnSmem Carve(float* base) {
    AttnSmem a;
    a.q = base;
    a.k = a.q + kMaxRows * D;
    a.v = a.k + kTile * (D + 1);
    a.s = a.v + kTile * D;
    a.o = a.s + kMaxRows * kTile;
    a.m = a.o + kMaxRows * D;
    a.l = a.m + kMaxRows;
    a.pos = reinterpret_cast<int*>(a.l + kMaxRows);
    return a;
  }
};

// Zeroes o, sets m = -inf, l = 0 for all rows. Callers fill q and pos, then __syncthreads().
template <int D>
__device__ void AttnInit(const AttnSmem<D>& sm) {
  for (int e = threadIdx.x; e < kMaxRows * D; e += kAttnThreads) sm.o[e] = 0.0f;
  for (int r = threadIdx.x; r < kMaxRows; r += kAttnThreads) {
    sm.m[r] = -INFINITY;
    sm.l[r] = 0.0f;
  }
}

// Visits positions [tile_begin, end) (tile_begin a multiple of kTile) of sequence `table_row`
// for kv head `kvh`, updating rows [0, rows). Row r sees position j iff
// pos[r] >= 0 && j <= pos[r] && (window == 0 || j > pos[r] - window).
// Precondition: q/pos/m/l/o initialized and a __syncthreads() since.
// Postcondition: each row's state is owned by warp (r % kAttnWarps); a __syncthreads() is
// needed before other warps read it.
template <typename T, int D>
__device__ void AttnRun(const AttnSmem<D>& sm, int rows, const PagedKv<T>& cache,
                        const int32_t* table_row, int kvh, int tile_begin, int end, int window,
                        float scale) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int t0 = tile_begin; t0 < end; t0 += kTile) {
    __syncthreads();  // the previous tile's k/v/s are no longer read
    for (int e = threadIdx.x; e < kTile * D; e += kAttnThreads) {
      const int t = e / D, d = e % D;
      const int p = t0 + t;
      float kv_k = 0.0f, kv_v = 0.0f;
      if (p < end) {
        const int32_t block = table_row[p / cache.page_size];
        const int32_t slot = p % cache.page_size;
        kv_k = ToFloat(cache.K(block, slot, kvh)[d]);
        kv_v = ToFloat(cache.V(block, slot, kvh)[d]);
      }
      sm.k[t * (D + 1) + d] = kv_k;
      sm.v[t * D + d] = kv_v;
    }
    __syncthreads();
    // Scores: idx = r * kTile + t, so a warp shares r (q broadcast) and lane = t.
    for (int idx = threadIdx.x; idx < rows * kTile; idx += kAttnThreads) {
      const int r = idx / kTile, t = idx % kTile;
      const int p = t0 + t, qp = sm.pos[r];
      const bool visible = qp >= 0 && p < end && p <= qp && (window == 0 || p > qp - window);
      float s = -INFINITY;
      if (visible) {
        const float* qr = sm.q + r * D;
        const float* kt = sm.k + t * (D + 1);
        float dot = 0.0f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) dot += qr[d] * kt[d];
        s = dot * scale;
      }
      sm.s[idx] = s;
    }
    __syncthreads();
    // Online softmax: warp w owns rows w, w + 4, ...; lane t holds position t0 + t.
    for (int r = warp; r < rows; r += kAttnWarps) {
      const float s = sm.s[r * kTile + lane];
      const float tile_max = WarpMax(s);
      const float m_old = sm.m[r];
      const float m_new = fmaxf(m_old, tile_max);
      if (m_new == -INFINITY) continue;         // nothing visible yet: state stays as initialized
      const float alpha = expf(m_old - m_new);  // 0 when m_old = -inf, 1 when unchanged
      const float pr = expf(s - m_new);         // 0 for masked positions
      const float psum = WarpSum(pr);
      for (int d = lane; d < D; d += 32) {
        float acc = sm.o[r * D + d] * alpha;
#pragma unroll
        for (int t = 0; t < kTile; ++t) {
          acc += __shfl_sync(0xffffffffu, pr, t) * sm.v[t * D + d];
        }
        sm.o[r * D + d] = acc;
      }
      const float l_new = sm.l[r] * alpha + psum;
      __syncwarp();
      if (lane == 0) {
        sm.m[r] = m_new;
        sm.l[r] = l_new;
      }
      __syncwarp();
    }
  }
  __syncthreads();
}

}  // namespace tandem::cuda::detail
