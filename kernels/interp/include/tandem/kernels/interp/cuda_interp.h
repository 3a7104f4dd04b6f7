// Force-included (g++ -include) into every .cu compiled for the CUDA interpreter: turns the
// CUDA C++ dialect our kernels use into plain C++ that runs on the interpreter's fibers.
//
//  - __shared__ is `static`: blocks run one at a time, so a static local is the block's shared
//    memory (not cleared between blocks, like real shared memory is not).
//  - threadIdx / blockIdx / blockDim / gridDim read the running fiber's values; warpSize is
//    the runtime's `extern "C" const int warpSize = 32` (a variable, as in CUDA).
//  - __syncthreads / __syncwarp / shuffles / votes are the scheduler's counted barriers.
//  - Atomics are plain read-modify-writes: fibers of a block never preempt each other and
//    blocks run one after another.
//  - Intrinsics (__fadd_rn, __umulhi, __int_as_float, ...) are exact host equivalents; the
//    file is compiled with -ffp-contract=off, so no multiply-add is fused (nvcc fuses them).
#pragma once

#ifndef TANDEM_CUDA_INTERP
#define TANDEM_CUDA_INTERP 1
#endif

// Before any CUDA header: crt/host_defines.h keeps a __shared__ defined first.
#define __shared__ static

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tandem/kernels/interp/runtime.h"

#undef __launch_bounds__
#define __launch_bounds__(...)

#define threadIdx (::tandem::interp::detail::g_vars.thread_idx)
#define blockIdx (::tandem::interp::detail::g_vars.block_idx)
#define blockDim (::tandem::interp::detail::g_vars.block_dim)
#define gridDim (::tandem::interp::detail::g_vars.grid_dim)
// device_launch_parameters.h declares the built-ins only under nvcc.
extern "C" const int warpSize;

// cuda_runtime.h's kernel-pointer overload exists only under nvcc.
template <typename... Args>
inline cudaError_t cudaFuncSetAttribute(void (*entry)(Args...), enum cudaFuncAttribute attr,
                                        int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

// ---- Synchronization ------------------------------------------------------------------------
inline void __syncthreads() {
  ::tandem::interp::detail::SyncThreads(::tandem::interp::detail::BarrierOp::kSync, 0);
}
inline int __syncthreads_count(int pred) {
  return ::tandem::interp::detail::SyncThreads(::tandem::interp::detail::BarrierOp::kCount, pred);
}
inline int __syncthreads_and(int pred) {
  return ::tandem::interp::detail::SyncThreads(::tandem::interp::detail::BarrierOp::kAnd, pred);
}
inline int __syncthreads_or(int pred) {
  return ::tandem::interp::detail::SyncThreads(::tandem::interp::detail::BarrierOp::kOr, pred);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::tandem::interp::detail::WarpCollective(::tandem::interp::detail::WarpOp::kSync, mask, 0, 0, 32);
}
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline unsigned __activemask() { return ::tandem::interp::detail::ActiveMask(); }

// ---- Warp shuffles and votes ----------------------------------------------------------------
namespace tandem::interp::detail {
template <typename T>
inline T Shuffle(WarpOp op, unsigned mask, T var, int arg, int width) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of this type");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = WarpCollective(op, mask, bits, arg, width);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace tandem::interp::detail

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  return ::tandem::interp::detail::Shuffle(::tandem::interp::detail::WarpOp::kShflIdx, mask, var,
                                           src_lane, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::tandem::interp::detail::Shuffle(::tandem::interp::detail::WarpOp::kShflUp, mask, var,
                                           static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  return ::tandem::interp::detail::Shuffle(::tandem::interp::detail::WarpOp::kShflDown, mask, var,
                                           static_cast<int>(delta), width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  return ::tandem::interp::detail::Shuffle(::tandem::interp::detail::WarpOp::kShflXor, mask, var,
                                           lane_mask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(::tandem::interp::detail::WarpCollective(
      ::tandem::interp::detail::WarpOp::kBallot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(::tandem::interp::detail::WarpCollective(
      ::tandem::interp::detail::WarpOp::kAny, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(::tandem::interp::detail::WarpCollective(
      ::tandem::interp::detail::WarpOp::kAll, mask, pred != 0, 0, 32));
}

// ---- Atomics (return the old value) ---------------------------------------------------------
#define TANDEM_INTERP_ATOMIC(name, T, expr) \
  inline T name(T* address, T val) {        \
    const T old = *address;                 \
    *address = (expr);                      \
    return old;                             \
  }
#define TANDEM_INTERP_ATOMIC_INTS(name, expr)              \
  TANDEM_INTERP_ATOMIC(name, int, expr)                    \
  TANDEM_INTERP_ATOMIC(name, unsigned int, expr)           \
  TANDEM_INTERP_ATOMIC(name, unsigned long long int, expr) \
  TANDEM_INTERP_ATOMIC(name, long long int, expr)
TANDEM_INTERP_ATOMIC_INTS(atomicAdd, old + val)
TANDEM_INTERP_ATOMIC(atomicAdd, float, old + val)
TANDEM_INTERP_ATOMIC(atomicAdd, double, old + val)
TANDEM_INTERP_ATOMIC(atomicSub, int, old - val)
TANDEM_INTERP_ATOMIC(atomicSub, unsigned int, old - val)
TANDEM_INTERP_ATOMIC_INTS(atomicExch, val)
TANDEM_INTERP_ATOMIC(atomicExch, float, val)
TANDEM_INTERP_ATOMIC_INTS(atomicMin, val < old ? val : old)
TANDEM_INTERP_ATOMIC_INTS(atomicMax, val > old ? val : old)
TANDEM_INTERP_ATOMIC_INTS(atomicAnd, old& val)
TANDEM_INTERP_ATOMIC_INTS(atomicOr, old | val)
TANDEM_INTERP_ATOMIC_INTS(atomicXor, old ^ val)
#undef TANDEM_INTERP_ATOMIC_INTS
#undef TANDEM_INTERP_ATOMIC
inline unsigned atomicInc(unsigned* address, unsigned val) {
  const unsigned old = *address;
  *address = old >= val ? 0u : old + 1u;
  return old;
}
inline unsigned atomicDec(unsigned* address, unsigned val) {
  const unsigned old = *address;
  *address = (old == 0u || old > val) ? val : old - 1u;
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T val) {
  static_assert(std::is_integral_v<T>, "atomicCAS on integers");
  const T old = *address;
  if (old == compare) *address = val;
  return old;
}

// ---- Intrinsics -----------------------------------------------------------------------------
// IEEE single-precision operations rounded to nearest: exactly what the host computes with
// -ffp-contract=off (SSE arithmetic, no excess precision on x86-64).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
// Fast-math variants: the accurate function (device results differ by a few ulp).
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((uint64_t{a} * b) >> 32);
}
inline int __mulhi(int a, int b) { return static_cast<int>((int64_t{a} * b) >> 32); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}

namespace tandem::interp::detail {
template <typename To, typename From>
inline To BitCast(From f) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}
}  // namespace tandem::interp::detail
inline float __int_as_float(int x) { return ::tandem::interp::detail::BitCast<float>(x); }
inline float __uint_as_float(unsigned x) { return ::tandem::interp::detail::BitCast<float>(x); }
inline int __float_as_int(float x) { return ::tandem::interp::detail::BitCast<int>(x); }
inline unsigned __float_as_uint(float x) { return ::tandem::interp::detail::BitCast<unsigned>(x); }
inline double __longlong_as_double(long long x) {
  return ::tandem::interp::detail::BitCast<double>(x);
}
inline long long __double_as_longlong(double x) {
  return ::tandem::interp::detail::BitCast<long long>(x);
}
// Conversions: x86-64 int->float conversion rounds to nearest (the default MXCSR mode).
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(std::nearbyint(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }

// Device overloads of min/max (CUDA provides them for every arithmetic type).
using std::max;
using std::min;
inline int64_t min(int64_t a, int32_t b) { return a < b ? a : b; }
inline int64_t max(int64_t a, int32_t b) { return a > b ? a : b; }
inline unsigned min(unsigned a, int b) { return std::min<unsigned>(a, static_cast<unsigned>(b)); }
using std::isfinite;
using std::isinf;
using std::isnan;
