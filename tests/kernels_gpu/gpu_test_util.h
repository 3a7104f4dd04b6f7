// Helpers for the GPU parity tests: skipping without a GPU, device buffers, dtype traits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda::testing {

// Empty when a GPU is usable, else why not. Any cudaGetDeviceCount error counts as "no GPU"
// (without a driver it returns cudaErrorInsufficientDriver / cudaErrorNoDevice).
inline std::string NoGpuReason() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e);
  }
  if (count == 0) return "no CUDA device";
  return "";
}

// Every GPU test derives from this: it skips (passes) on machines without a GPU.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = NoGpuReason();
    if (!reason.empty()) GTEST_SKIP() << "Skipping GPU test: " << reason;
  }
};

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) TANDEM_CUDA_CHECK(cudaMalloc(&ptr_, n * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { Upload(host); }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void Upload(const std::vector<T>& host) {
    if (!host.empty()) {
      TANDEM_CUDA_CHECK(
          cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    TANDEM_CUDA_CHECK(cudaDeviceSynchronize());
    if (n_ > 0) {
      TANDEM_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    }
    return host;
  }
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_ = 0;
};

inline float ToF(float x) { return x; }
inline float ToF(__half x) { return __half2float(x); }
inline float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T>
T FromF(float x);
template <>
inline float FromF<float>(float x) {
  return x;
}
template <>
inline __half FromF<__half>(float x) {
  return __float2half_rn(x);
}
template <>
inline __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Per-dtype tolerance: |got - ref| <= atol + rtol * |ref|, element by element.
template <typename T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr float kAtol = 2e-5f, kRtol = 2e-5f;
  static constexpr const char* kName = "f32";
};
template <>
struct Tol<__half> {
  static constexpr float kAtol = 2e-3f, kRtol = 4e-3f;
  static constexpr const char* kName = "f16";
};
template <>
struct Tol<__nv_bfloat16> {
  static constexpr float kAtol = 1.6e-2f, kRtol = 3e-2f;
  static constexpr const char* kName = "bf16";
};

// Random values rounded to T, returned both as T (for the device) and as float (for the
// reference), so the reference sees exactly what the kernel sees.
template <typename T>
void RandomRounded(size_t n, float lo, float hi, uint32_t seed, std::vector<T>* t,
                   std::vector<float>* f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  t->resize(n);
  f->resize(n);
  for (size_t i = 0; i < n; ++i) {
    (*t)[i] = FromF<T>(dist(rng));
    (*f)[i] = ToF((*t)[i]);
  }
}

template <typename T>
std::vector<float> ToFloatVec(const std::vector<T>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = ToF(v[i]);
  return f;
}

// Checks every element; reports the first few mismatches and the count.
inline void ExpectClose(const std::vector<float>& got, const std::vector<float>& ref, float atol,
                        float rtol, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const float tol = atol + rtol * std::fabs(ref[i]);
    if (!(std::fabs(got[i] - ref[i]) <= tol)) {
      if (bad < 5) {
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " ref " << ref[i]
                      << " (tol " << tol << ")";
      }
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements out of tolerance";
}

template <typename T>
void ExpectCloseT(const std::vector<T>& got, const std::vector<float>& ref, const std::string& what,
                  float scale = 1.0f) {
  ExpectClose(ToFloatVec(got), ref, Tol<T>::kAtol * scale, Tol<T>::kRtol * scale,
              what + " [" + Tol<T>::kName + "]");
}

using DTypes = ::testing::Types<float, __half, __nv_bfloat16>;

}  // namespace tandem::cuda::testing
