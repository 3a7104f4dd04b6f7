// Private to the CUDA backend: checkpoint tensors as host arrays of the runner's element type,
// ready to upload (exact widening to f32, one rounding to T).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "tandem/common/dtype.h"
#include "tandem/engine/weights.h"
#include "tandem/kernels/cuda/gemm.h"
#include "tandem/kernels/ref/dequant.h"

namespace tandem::cuda_backend::host_weights {

using cuda::DataType;

template <typename T>
struct TypeTraits;
template <>
struct TypeTraits<float> {
  static constexpr DType kDType = DType::kF32;
  static constexpr DataType kData = DataType::kF32;
};
template <>
struct TypeTraits<__half> {
  static constexpr DType kDType = DType::kF16;
  static constexpr DataType kData = DataType::kF16;
};
template <>
struct TypeTraits<__nv_bfloat16> {
  static constexpr DType kDType = DType::kBF16;
  static constexpr DataType kData = DataType::kBF16;
};

template <typename T>
T FromFloat(float f);
template <>
inline float FromFloat<float>(float f) {
  return f;
}
template <>
inline __half FromFloat<__half>(float f) {
  __half_raw r;
  r.x = kernels::ref::FloatToHalf(f);
  return __half(r);
}
template <>
inline __nv_bfloat16 FromFloat<__nv_bfloat16>(float f) {
  __nv_bfloat16_raw r;
  r.x = kernels::ref::FloatToBf16(f);
  return __nv_bfloat16(r);
}

// Host copy of a tensor as T: the stored bytes when the checkpoint holds T already, else an
// exact widening to f32 and one rounding to T (in parallel: an 8B model has 8e9 elements).
template <typename T>
std::vector<T> ToHost(const WeightTensor& t) {
  int64_t count = 1;
  for (int64_t d : t.shape) count *= d;
  std::vector<T> out(count);
  if (t.raw != nullptr && t.dtype == TypeTraits<T>::kDType) {
    std::memcpy(out.data(), t.raw, count * sizeof(T));
    return out;
  }
  constexpr int64_t kChunk = int64_t{1} << 16;  // a multiple of every quantization block
#pragma omp parallel for schedule(static)
  for (int64_t begin = 0; begin < count; begin += kChunk) {
    const int64_t n = std::min(kChunk, count - begin);
    std::vector<float> f(n);
    if (t.data != nullptr) {
      std::copy(t.data + begin, t.data + begin + n, f.begin());
    } else {
      kernels::ref::Dequantize(
          t.dtype, static_cast<const std::byte*>(t.raw) + DTypeBytes(t.dtype, begin), n, f.data());
    }
    for (int64_t i = 0; i < n; ++i) out[begin + i] = FromFloat<T>(f[i]);
  }
  return out;
}

}  // namespace tandem::cuda_backend::host_weights
