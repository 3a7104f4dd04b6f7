// cuda_runner_bench's device and its limits (cuda_runner_bench_device.h).
#include "cuda_runner_bench_device.h"

#include <cstddef>
#include <string>

#include <fmt/format.h>

#include "tandem/engine/cuda_runner.h"

#if TANDEM_BENCH_CUDART
#include <cuda_runtime.h>
#endif

namespace tandem::bench {
namespace {

// Spec sheet figures (dense bf16, no sparsity), first substring match wins: specific names first.
struct SpecRow {
  const char* match;
  double hbm_gbs;
  double bf16_tflops;
};
constexpr SpecRow kSpecs[] = {
    {"GH200", 4000, 989},          {"H200 NVL", 4800, 835},  {"H200", 4800, 989},
    {"H100 NVL", 3900, 835},       {"H100 PCIe", 2000, 756}, {"H100", 3350, 989},
    {"H800", 3350, 989},           {"B200", 8000, 2250},     {"A100-SXM4-80GB", 2039, 312},
    {"A100 80GB PCIe", 1935, 312}, {"A100", 1555, 312},      {"L40S", 864, 362},
};

const SpecRow* FindSpec(const std::string& name) {
  for (const SpecRow& r : kSpecs) {
    if (name.find(r.match) != std::string::npos) return &r;
  }
  return nullptr;
}

#if TANDEM_BENCH_CUDART
// Device-to-device cudaMemcpy of 1 GiB, 5 times after a warm-up: bytes read + written per second.
double MeasureCopyGbs() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    if (a != nullptr) cudaFree(a);
    return 0;
  }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaMemset(a, 1, bytes);
  cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
  constexpr int kReps = 5;
  cudaEventRecord(e0, nullptr);
  for (int i = 0; i < kReps; ++i) cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, nullptr);
  cudaEventRecord(e1, nullptr);
  float ms = 0;
  const bool ok = cudaEventSynchronize(e1) == cudaSuccess &&
                  cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess && ms > 0;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  (void)cudaGetLastError();
  return ok ? 2.0 * bytes * kReps / (ms * 1e-3) / 1e9 : 0;
}
#endif

}  // namespace

StatusOr<DeviceInfo> QueryDevice(const Flags& f) {
  DeviceInfo d;
  if (f.backend == "cpu") {
    d.name = "cpu";
  } else if (CudaBackendName() == "cuda-interp") {
    d.name = "cuda-interp (CPU interpreter)";
  } else {
#if TANDEM_BENCH_CUDART
    cudaDeviceProp prop{};
    const cudaError_t e = cudaGetDeviceProperties(&prop, f.device);
    if (e != cudaSuccess) {
      return UnavailableError("no usable CUDA device {}: {}", f.device, cudaGetErrorString(e));
    }
    cudaSetDevice(f.device);
    d.name = prop.name;
    d.memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, f.device) == cudaSuccess &&
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, f.device) ==
            cudaSuccess &&
        clock_khz > 0 && bus_bits > 0) {
      d.hbm_gbs = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;  // double data rate
      d.hbm_source =
          fmt::format("cudaDeviceGetAttribute: 2 x {} MHz x {} bit", clock_khz / 1000, bus_bits);
    }
    (void)cudaGetLastError();
    if (f.copy_bandwidth) d.copy_gbs = MeasureCopyGbs();
#else
    d.name = fmt::format("{} (no device query in this build)", CudaBackendName());
#endif
  }
  if (const SpecRow* s = FindSpec(d.name)) {
    if (d.hbm_gbs == 0) {
      d.hbm_gbs = s->hbm_gbs;
      d.hbm_source = fmt::format("spec table ({})", s->match);
    }
    d.peak_tflops = s->bf16_tflops;
    d.peak_source = fmt::format("spec table ({})", s->match);
  }
  if (f.peak_gbs > 0) {
    d.hbm_gbs = f.peak_gbs;
    d.hbm_source = "--peak-gbs";
  }
  if (f.peak_tflops > 0) {
    d.peak_tflops = f.peak_tflops;
    d.peak_source = "--peak-tflops";
  }
  if (d.hbm_source.empty()) d.hbm_source = "unknown";
  if (d.peak_source.empty()) d.peak_source = "unknown";
  return d;
}

}  // namespace tandem::bench
