// The backend flags of every command that loads a model: `--weights`, `--device`,
// `--deterministic`, `--cuda-device`, `--simulate-compute` (header-only, for mains: it needs CLI11,
// which the engine library does not link).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "tandem/common/dtype.h"
#include "tandem/engine/engine.h"

namespace tandem {

// Adds `--weights auto|f32|f16|bf16|q8_0|q4_0|q4_1` bound to `value` (keep its default "auto").
inline CLI::Option* AddWeightsFlag(CLI::App& app, std::string* value) {
  return app
      .add_option("--weights", *value,
                  "How weight matrices are stored. CPU (compute f32): auto = the checkpoint's own "
                  "dtype; f32; bf16 (half the bytes per decode step); q8_0 / q4_0 / q4_1 (GGUF "
                  "block quantization). CUDA: auto = bf16; f32; f16; bf16")
      ->check(CLI::IsMember({"auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"}))
      ->capture_default_str();
}

struct DeviceFlags {
  std::string device = "cpu";
  int32_t cuda_device = 0;
  bool deterministic = false;
  // A compute profile JSON: simulate the forward pass (EngineOptions::simulate_compute).
  std::string simulate_compute;
};

// Adds `--device cpu|cuda`, `--cuda-device N`, `--deterministic` and `--simulate-compute`.
inline void AddDeviceFlags(CLI::App& app, DeviceFlags* flags) {
  app.add_option("--device", flags->device,
                 "Backend: cpu, or cuda (a GPU; fails with the reason when none is usable)")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  app.add_option("--cuda-device", flags->cuda_device, "CUDA device ordinal")->capture_default_str();
  app.add_flag("--deterministic", flags->deterministic,
               "Batch-invariant GPU kernels (fixed GEMM algorithm, fixed attention splits): a "
               "request's tokens do not depend on what it is batched with (the CPU backend "
               "always is)");
  app.add_option("--simulate-compute", flags->simulate_compute,
                 "Simulate the forward pass with this compute profile (JSON, e.g. "
                 "bench/profiles/smollm2-135m-cpu-2core.json): steps take the profile's time, KV "
                 "pages are still written and moved, tokens are deterministic; no weights are read")
      ->check(CLI::ExistingFile);
}

inline void ApplyDeviceFlags(const DeviceFlags& flags, EngineOptions* options) {
  options->device = flags.device == "cuda" ? Device::kCuda : Device::kCpu;
  options->cuda_device = flags.cuda_device;
  options->deterministic = flags.deterministic;
  options->simulate_compute = flags.simulate_compute;
}

// The same flags again, for a command that starts a worker process with them.
inline std::vector<std::string> DeviceFlagArgs(const DeviceFlags& flags) {
  std::vector<std::string> args = {"--device", flags.device, "--cuda-device",
                                   std::to_string(flags.cuda_device)};
  if (flags.deterministic) args.push_back("--deterministic");
  if (!flags.simulate_compute.empty()) {
    args.push_back("--simulate-compute");
    args.push_back(std::filesystem::absolute(flags.simulate_compute).string());
  }
  return args;
}

// The EngineOptions::weights value of a checked flag value ("auto" → the checkpoint's dtype).
inline std::optional<DType> WeightsFromFlag(const std::string& value) {
  if (value == "auto") return std::nullopt;
  auto d = ParseDType(value);
  return d.ok() ? std::optional<DType>(*d) : std::nullopt;
}

}  // namespace tandem
