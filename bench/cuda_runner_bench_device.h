// cuda_runner_bench's device and its limits: the name, the memory bandwidth and bf16 peak
// (queried through cudart in the "cuda" flavour, else from a spec table or the flags) and a
// measured device-to-device copy.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "cuda_runner_bench_model.h"
#include "tandem/common/status.h"

namespace tandem::bench {

struct DeviceInfo {
  std::string name;         // "NVIDIA H200", "cpu", "cuda-interp (CPU interpreter)"
  double hbm_gbs = 0;       // peak memory bandwidth, 1e9 B/s; 0 = unknown
  std::string hbm_source;   // how hbm_gbs was found
  double copy_gbs = 0;      // measured device-to-device copy, (read + write) B/s / 1e9; 0 = none
  double peak_tflops = 0;   // dense bf16 tensor-core peak; 0 = unknown
  std::string peak_source;  // how peak_tflops was found
  int64_t memory_bytes = 0;

  nlohmann::json ToJson() const {
    return {{"name", name},
            {"hbm_gbs", hbm_gbs},
            {"hbm_source", hbm_source},
            {"copy_gbs", copy_gbs},
            {"peak_bf16_tflops", peak_tflops},
            {"peak_source", peak_source},
            {"memory_bytes", memory_bytes}};
  }
};

StatusOr<DeviceInfo> QueryDevice(const Flags& f);

}  // namespace tandem::bench
