// The `--weights` flag of every command that loads a model (header-only, for mains: it needs
// CLI11, which the engine library does not link).
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "tandem/common/dtype.h"

namespace tandem {

// Adds `--weights auto|f32|bf16|q8_0|q4_0|q4_1` bound to `value` (keep its default "auto").
inline CLI::Option* AddWeightsFlag(CLI::App& app, std::string* value) {
  return app
      .add_option("--weights", *value,
                  "How weight matrices are stored (compute is f32): auto = the checkpoint's own "
                  "dtype; f32; bf16 (half the bytes per decode step); q8_0 / q4_0 / q4_1 (GGUF "
                  "block quantization)")
      ->check(CLI::IsMember({"auto", "f32", "bf16", "q8_0", "q4_0", "q4_1"}))
      ->capture_default_str();
}

// The EngineOptions::weights value of a checked flag value ("auto" → the checkpoint's dtype).
inline std::optional<DType> WeightsFromFlag(const std::string& value) {
  if (value == "auto") return std::nullopt;
  auto d = ParseDType(value);
  return d.ok() ? std::optional<DType>(*d) : std::nullopt;
}

}  // namespace tandem
