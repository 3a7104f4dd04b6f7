// GPU sampler. The spec is the comment at the top of engine/src/sampling/sampler.cc and the
// formulas in logits_processing.h / token_filter.h; step numbers below refer to sampler.cc.
#ifdef TANDEM_CUDA_INTERP
#include "tandem/kernels/interp/cub_shim.h"  // CPU segmented sort, same temp-storage protocol
#else
#include <cub/device/device_segmented_radix_sort.cuh>
#endif

#include "device_utils.cuh"
#include "tandem/kernels/cuda/sampling.h"

namespace tandem::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kMarkBit = 1 << 30;
constexpr int kCountMask = kMarkBit - 1;

// Row states written by pass 1.
constexpr int kRowDone = 1;       // token chosen in pass 1
constexpr int kRowNeedsSort = 0;  // token chosen in pass 3 from the sorted keys

__device__ uint32_t Philox4x32x10Word0(uint64_t seed, uint64_t counter, uint32_t lane) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = lane, c3 = 0u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return c0;
}

__device__ float PhiloxUniformDevice(uint64_t seed, uint64_t counter, uint32_t lane) {
  return __uint2float_rn(Philox4x32x10Word0(seed, counter, lane) >> 8) * 0x1p-24f;
}

// glibc's expf / logf are correctly rounded in practice; so is rounding the double result.
__device__ __forceinline__ float ExpF(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}
__device__ __forceinline__ float LogF(float x) {
  return static_cast<float>(log(static_cast<double>(x)));
}
__device__ __forceinline__ float NanToZero(float x) { return isnan(x) ? 0.0f : x; }

// FixedOrderSum (logits_processing.h) of f(x[i]) by warp 0: lane j sums i = j, j + 32, ... in
// increasing i, then lane 0 adds the 32 partials in lane order. Result valid in thread 0.
template <typename F>
__device__ float FixedOrderSum(const float* x, int64_t n, F f, float* scratch32) {
  if (threadIdx.x < 32) {
    float partial = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += 32) partial = __fadd_rn(partial, f(x[i]));
    scratch32[threadIdx.x] = partial;
    __syncwarp();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (int j = 0; j < 32; ++j) total = __fadd_rn(total, scratch32[j]);
      scratch32[0] = total;
    }
    __syncwarp();
  }
  __syncthreads();
  const float total = scratch32[0];
  __syncthreads();
  return total;
}

__device__ detail::ArgmaxCand RowArgmax(const float* x, int64_t n, detail::ArgmaxCand* scratch) {
  detail::ArgmaxCand best{__int_as_float(0x7fc00000), 0x7fffffff};
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const detail::ArgmaxCand c{x[i], static_cast<int32_t>(i)};
    if (detail::Better(c, best)) best = c;
  }
  return detail::BlockArgmax(best, scratch);
}

__device__ bool FiltersEnabled(const SampleRowParams& rp, int64_t n) {
  return (rp.top_k > 0 && rp.top_k < n) || rp.top_p < 1.0f || rp.min_p > 0.0f;
}

struct Workspace {
  float* w;            // [rows, vocab] x, then the softmax weights
  uint64_t* keys_in;   // [rows, vocab]
  uint64_t* keys_out;  // [rows, vocab]; pass 1 uses it as int32 marks first
  int* offsets;        // [rows + 1]
  float* total;        // [rows] Z
  float* u;            // [rows]
  float* log_z;        // [rows]
  float* raw_max;      // [rows]
  int* state;          // [rows]
  void* sort_temp;
  size_t sort_temp_bytes;
};

size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

Workspace Carve(void* base, int64_t rows, int64_t vocab, size_t sort_temp_bytes, size_t* used) {
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* r = p == nullptr ? nullptr : p + off;
    off += AlignUp(bytes);
    return r;
  };
  const size_t elems = size_t(rows) * size_t(vocab);
  Workspace ws;
  ws.w = reinterpret_cast<float*>(take(elems * sizeof(float)));
  ws.keys_in = reinterpret_cast<uint64_t*>(take(elems * sizeof(uint64_t)));
  ws.keys_out = reinterpret_cast<uint64_t*>(take(elems * sizeof(uint64_t)));
  ws.offsets = reinterpret_cast<int*>(take((rows + 1) * sizeof(int)));
  ws.total = reinterpret_cast<float*>(take(rows * sizeof(float)));
  ws.u = reinterpret_cast<float*>(take(rows * sizeof(float)));
  ws.log_z = reinterpret_cast<float*>(take(rows * sizeof(float)));
  ws.raw_max = reinterpret_cast<float*>(take(rows * sizeof(float)));
  ws.state = reinterpret_cast<int*>(take(rows * sizeof(int)));
  ws.sort_temp = take(sort_temp_bytes);
  ws.sort_temp_bytes = sort_temp_bytes;
  *used = off;
  return ws;
}

// Pass 1, one block per row: steps 1-6 of sampler.cc, and the raw log-normalizer.
__global__ void __launch_bounds__(kThreads) SamplePass1(SampleParams p, Workspace ws) {
  __shared__ detail::ArgmaxCand arg_scratch[32];
  __shared__ float sum_scratch[32];
  const int64_t row = blockIdx.x, n = p.vocab;
  const SampleRowParams rp = p.row_params[row];
  const float* logits = p.logits + row * n;
  float* x = ws.w + row * n;
  int* marks = reinterpret_cast<int*>(ws.keys_out) + row * n;
  const int64_t h_begin = p.history_offsets[row], h_end = p.history_offsets[row + 1];
  const int64_t g_begin = h_begin + p.prompt_lens[row];
  if (threadIdx.x == 0) ws.offsets[row] = static_cast<int>(row * n);
  if (threadIdx.x == 0 && row == 0) ws.offsets[p.rows] = static_cast<int>(p.rows * n);

  // 1. x = logits.  2. Penalties (each distinct token modified by exactly one thread).
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    x[i] = logits[i];
    marks[i] = 0;
  }
  __syncthreads();
  const bool repetition = rp.repetition_penalty != 1.0f;
  const bool pres_freq = rp.presence_penalty != 0.0f || rp.frequency_penalty != 0.0f;
  if (repetition) {
    for (int64_t i = h_begin + threadIdx.x; i < h_end; i += kThreads) {
      const int32_t t = p.history[i];
      if (t < 0 || t >= n) continue;
      if ((atomicOr(&marks[t], kMarkBit) & kMarkBit) != 0) continue;
      const float l = x[t];
      x[t] = l > 0.0f ? __fdiv_rn(l, rp.repetition_penalty) : __fmul_rn(l, rp.repetition_penalty);
    }
    __syncthreads();
  }
  if (pres_freq) {
    for (int64_t i = g_begin + threadIdx.x; i < h_end; i += kThreads) {
      const int32_t t = p.history[i];
      if (t >= 0 && t < n) atomicAdd(&marks[t], 1);
    }
    __syncthreads();
    for (int64_t i = g_begin + threadIdx.x; i < h_end; i += kThreads) {
      const int32_t t = p.history[i];
      if (t < 0 || t >= n) continue;
      const int c = atomicAnd(&marks[t], kMarkBit) & kCountMask;  // takes the count once
      if (c == 0) continue;
      const float pen =
          __fadd_rn(rp.presence_penalty, __fmul_rn(rp.frequency_penalty, static_cast<float>(c)));
      x[t] = __fsub_rn(x[t], pen);
    }
    __syncthreads();
  }
  const bool penalized = repetition || pres_freq;

  const detail::ArgmaxCand raw = RowArgmax(logits, n, arg_scratch);
  const float raw_max = logits[raw.index];
  int32_t token = -1;
  bool have_raw_z = false;
  float raw_z = 0.0f;
  if (rp.temperature == 0.0f) {  // 3. greedy
    token = RowArgmax(x, n, arg_scratch).index;
  } else {  // 4.
    if (rp.temperature != 1.0f) {
      for (int64_t i = threadIdx.x; i < n; i += kThreads) x[i] = __fdiv_rn(x[i], rp.temperature);
      __syncthreads();
    }
    const detail::ArgmaxCand best = RowArgmax(x, n, arg_scratch);
    const float max = x[best.index];
    if (!isfinite(max)) {
      token = best.index;
    } else {
      __syncthreads();  // every thread has read x[best.index]
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        x[i] = NanToZero(ExpF(__fsub_rn(x[i], max)));
      }
      __syncthreads();
      const float total = FixedOrderSum(
          x, n, [](float v) { return v; }, sum_scratch);
      if (!penalized && rp.temperature == 1.0f) {
        raw_z = total;
        have_raw_z = true;
      }
      const float u = PhiloxUniformDevice(rp.seed, static_cast<uint64_t>(rp.position), 0);  // 5.
      if (FiltersEnabled(rp, n)) {  // 7. continues in pass 3
        for (int64_t i = threadIdx.x; i < n; i += kThreads) {
          ws.keys_in[row * n + i] = (static_cast<uint64_t>(__float_as_uint(x[i])) << 32) |
                                    (0xffffffffu - static_cast<uint32_t>(i));
        }
        if (threadIdx.x == 0) {
          ws.total[row] = total;
          ws.u[row] = u;
        }
      } else if (threadIdx.x == 0) {  // 6. walk ids left to right
        const float target = __fmul_rn(u, total);
        float cum = 0.0f;
        int32_t last = -1;
        for (int64_t i = 0; i < n; ++i) {
          const float wi = x[i];
          if (!(wi > 0.0f)) continue;
          cum = __fadd_rn(cum, wi);
          last = static_cast<int32_t>(i);
          if (target < cum) break;
        }
        token = last >= 0 ? last : 0;
      }
    }
  }
  if (!have_raw_z) {
    raw_z = FixedOrderSum(
        logits, n, [raw_max](float l) { return NanToZero(ExpF(__fsub_rn(l, raw_max))); },
        sum_scratch);
  }
  if (threadIdx.x == 0) {
    const float log_z = LogF(raw_z);
    ws.log_z[row] = log_z;
    ws.raw_max[row] = raw_max;
    ws.state[row] = token >= 0 ? kRowDone : kRowNeedsSort;
    if (token >= 0) {
      p.out_tokens[row] = token;
      if (p.out_logprobs != nullptr) {
        p.out_logprobs[row] = __fsub_rn(__fsub_rn(logits[token], raw_max), log_z);
      }
    }
  }
}

__device__ __forceinline__ float KeyW(uint64_t k) {
  return __uint_as_float(static_cast<uint32_t>(k >> 32));
}
__device__ __forceinline__ int32_t KeyId(uint64_t k) {
  return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(k));
}

// Pass 3, one thread per row: SelectTokens (token_filter.h) and Draw on the sorted keys.
__global__ void SamplePass3(SampleParams p, Workspace ws, bool sorted) {
  const int64_t row = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (row >= p.rows || ws.state[row] != kRowNeedsSort) return;
  if (!sorted) {
    p.out_tokens[row] = -1;
    return;
  }
  const SampleRowParams rp = p.row_params[row];
  const int64_t n = p.vocab;
  const uint64_t* key = ws.keys_out + row * n;
  int64_t kept;
  float top_p_base;
  if (rp.top_k > 0 && rp.top_k < n) {
    kept = rp.top_k;
    float mass = 0.0f;
    for (int64_t j = 0; j < kept; ++j) mass = __fadd_rn(mass, KeyW(key[j]));
    top_p_base = mass;
  } else {
    kept = n;
    top_p_base = ws.total[row];
  }
  if (rp.min_p > 0.0f) {
    while (kept > 1 && KeyW(key[kept - 1]) < rp.min_p) --kept;
  }
  if (rp.top_p < 1.0f) {
    const float threshold = __fmul_rn(rp.top_p, top_p_base);
    float cum = 0.0f;
    for (int64_t j = 0; j < kept; ++j) {
      cum = __fadd_rn(cum, KeyW(key[j]));
      if (cum >= threshold) {
        kept = j + 1;
        break;
      }
    }
  }
  float mass = 0.0f;
  for (int64_t j = 0; j < kept; ++j) mass = __fadd_rn(mass, KeyW(key[j]));
  const float target = __fmul_rn(ws.u[row], mass);
  float cum = 0.0f;
  int32_t token = -1;
  for (int64_t j = 0; j < kept; ++j) {
    const float wj = KeyW(key[j]);
    if (!(wj > 0.0f)) continue;
    cum = __fadd_rn(cum, wj);
    token = KeyId(key[j]);
    if (target < cum) break;
  }
  if (token < 0) token = KeyId(key[0]);
  p.out_tokens[row] = token;
  if (p.out_logprobs != nullptr) {
    const float l = p.logits[row * n + token];
    p.out_logprobs[row] = __fsub_rn(__fsub_rn(l, ws.raw_max[row]), ws.log_z[row]);
  }
}

__global__ void PhiloxKernel(uint64_t seed, const uint64_t* counters, uint32_t lane, int64_t n,
                             float* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = PhiloxUniformDevice(seed, counters[i], lane);
}

cudaError_t SortTempBytes(int64_t rows, int64_t vocab, size_t* bytes) {
  *bytes = 0;
  return cub::DeviceSegmentedRadixSort::SortKeysDescending(
      nullptr, *bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<int>(rows * vocab), static_cast<int>(rows), static_cast<const int*>(nullptr),
      static_cast<const int*>(nullptr) + 1);
}

}  // namespace

cudaError_t SampleWorkspaceBytes(int64_t rows, int64_t vocab, size_t* bytes) {
  if (rows <= 0 || vocab <= 0 || rows * vocab > 0x7fffffff) return cudaErrorInvalidValue;
  size_t sort_bytes = 0;
  TANDEM_CUDA_RETURN_IF_ERROR(SortTempBytes(rows, vocab, &sort_bytes));
  Carve(nullptr, rows, vocab, sort_bytes, bytes);
  return cudaSuccess;
}

cudaError_t LaunchSample(const SampleParams& p, cudaStream_t stream) {
  if (p.logits == nullptr || p.row_params == nullptr || p.history_offsets == nullptr ||
      p.prompt_lens == nullptr || p.out_tokens == nullptr || p.rows < 0 || p.vocab <= 0 ||
      p.rows * p.vocab > 0x7fffffff) {
    return cudaErrorInvalidValue;
  }
  if (p.rows == 0) return cudaSuccess;
  size_t sort_bytes = 0, needed = 0;
  TANDEM_CUDA_RETURN_IF_ERROR(SortTempBytes(p.rows, p.vocab, &sort_bytes));
  const Workspace ws = Carve(p.workspace, p.rows, p.vocab, sort_bytes, &needed);
  if (p.workspace == nullptr || p.workspace_bytes < needed) return cudaErrorInvalidValue;
  TANDEM_LAUNCH(SamplePass1, static_cast<unsigned>(p.rows), kThreads, 0, stream, p, ws);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  if (p.any_filter) {  // pass 2: sort each row's keys, w descending then id ascending
    size_t temp = ws.sort_temp_bytes;
    TANDEM_CUDA_RETURN_IF_ERROR(cub::DeviceSegmentedRadixSort::SortKeysDescending(
        ws.sort_temp, temp, ws.keys_in, ws.keys_out, static_cast<int>(p.rows * p.vocab),
        static_cast<int>(p.rows), ws.offsets, ws.offsets + 1, 0, 64, stream));
  }
  const unsigned blocks = static_cast<unsigned>((p.rows + 127) / 128);
  TANDEM_LAUNCH(SamplePass3, blocks, 128, 0, stream, p, ws, p.any_filter);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

cudaError_t LaunchPhiloxUniform(uint64_t seed, const uint64_t* counters, uint32_t lane, int64_t n,
                                float* out, cudaStream_t stream) {
  if (n < 0 || (n > 0 && (counters == nullptr || out == nullptr))) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  TANDEM_LAUNCH(PhiloxKernel, static_cast<unsigned>((n + 255) / 256), 256, 0, stream, seed,
                counters, lane, n, out);
  TANDEM_CUDA_LAUNCH_CHECK(stream);
  return cudaSuccess;
}

}  // namespace tandem::cuda
