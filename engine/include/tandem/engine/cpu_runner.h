// The CPU backend of ModelRunner: weights repacked once for kernels::cpu::Gemm (panel GEMM,
// batch-invariant by construction), paged attention over host pages, OpenMP threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "tandem/common/dtype.h"
#include "tandem/common/status.h"
#include "tandem/engine/model_runner.h"
#include "tandem/engine/weights.h"

namespace tandem {

struct CpuRunnerOptions {
  // How weight matrices are stored: f32, bf16, q8_0, q4_0 or q4_1 (compute is f32 either way;
  // each stored weight is widened exactly). Default: each matrix keeps its checkpoint dtype
  // (f16 → f32), so a GGUF's mixed Q4_1 / Q8_0 matrices stay exactly what the file holds.
  std::optional<DType> weights;
  // Compute threads; 0 = every core. Default: 0.
  int32_t num_threads = 0;
};

// INVALID_ARGUMENT when a matrix cannot be stored as `options.weights` (e.g. a row length that
// is not a multiple of the quantization block).
StatusOr<std::unique_ptr<ModelRunner>> CreateCpuRunner(const ModelConfig& config,
                                                       std::unique_ptr<ModelWeights> weights,
                                                       const CpuRunnerOptions& options);

}  // namespace tandem
