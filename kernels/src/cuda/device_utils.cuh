// Device helpers shared by the kernels: dtype conversion and fixed-order block reductions.
// Private to tandem_kernels_cuda.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch.cuh"

namespace tandem::cuda::detail {

template <typename T>
__device__ __forceinline__ float ToFloat(T x);
template <>
__device__ __forceinline__ float ToFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToFloat<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float ToFloat<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block; every thread gets the result. The order depends only on blockDim (fixed
// per kernel), never on data or timing, so a row reduced by one block is reproducible and
// independent of the other rows. `scratch` holds 32 floats; blockDim.x must be a multiple of 32.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < num_warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

// Argmax candidate. Better(a, b): a is not NaN and (b is NaN or a > b or a == b with a lower
// index). Among non-NaN values this is a total order on (value, index), so any reduction tree
// gives the same winner: the largest value, lowest index among equals (+0 == -0 tie by index).
struct ArgmaxCand {
  float value;
  int32_t index;
};

__device__ __forceinline__ bool Better(const ArgmaxCand& a, const ArgmaxCand& b) {
  if (isnan(a.value)) return false;
  if (isnan(b.value)) return true;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

// Block-wide argmax; every thread gets the winner. `scratch` holds 32 candidates. A result
// with a NaN value means every element was NaN: callers map it to index 0.
__device__ __forceinline__ ArgmaxCand BlockArgmax(ArgmaxCand c, ArgmaxCand* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgmaxCand o;
    o.value = __shfl_xor_sync(0xffffffffu, c.value, offset);
    o.index = __shfl_xor_sync(0xffffffffu, c.index, offset);
    if (Better(o, c)) c = o;
  }
  __syncthreads();
  if (lane == 0) scratch[warp] = c;
  __syncthreads();
  c = lane < num_warps ? scratch[lane] : ArgmaxCand{__int_as_float(0x7fc00000), 0x7fffffff};
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgmaxCand o;
    o.value = __shfl_xor_sync(0xffffffffu, c.value, offset);
    o.index = __shfl_xor_sync(0xffffffffu, c.index, offset);
    if (Better(o, c)) c = o;
  }
  if (isnan(c.value)) c.index = 0;
  return c;
}

}  // namespace tandem::cuda::detail

// Explicit instantiation of a launcher template for the three storage dtypes.
#define TANDEM_FOR_EACH_DTYPE(MACRO) \
  MACRO(float)                       \
  MACRO(__half)                      \
  MACRO(__nv_bfloat16)
