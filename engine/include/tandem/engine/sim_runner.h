// Simulated compute: a ModelRunner that takes the time a calibrated timing model says a step
// takes instead of computing it, so SLO and autoscaling experiments with many workers fit on a
// few cores (the workers sleep; they do not compete for the CPU).
//
// What stays real: the KV geometry and page pool (same bytes per token as the CPU backend, so the
// KV transport moves as much as for the model), block tables, the per-layer "K/V written" signal
// (the step's time is spread over the layers, so layer-pipelined transfers behave as they do),
// batching and scheduling around the runner. What is simulated: the arithmetic. Each token's K/V
// slots are filled with deterministic values that chain over the sequence (slot p holds a 24-bit
// hash of slot p-1 and token p), and a sampled token is a hash of the sequence's chain at the row,
// the seed and the position — so a stream depends on every prompt token and on the KV bytes that
// reached this process, is reproducible, and is the same from a single process and from any
// disaggregated layout. Sampled tokens avoid the config's EOS ids (streams run to max_tokens).
// No weights are read.
//
// Thread safety: as ModelRunner (one driving thread); ComputeProfile is a value.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tandem/common/status.h"
#include "tandem/engine/model_runner.h"

namespace tandem {

// A piecewise-linear curve through measured points (x ascending). Below the first point it is
// the first value (fixed per-step cost); past the last it continues the last segment's slope.
struct TimingCurve {
  std::vector<double> x;
  std::vector<double> seconds;
  double At(double v) const;
};

// The timing model of one backend on one machine, written by bench/compute_profile_bench.cc.
// JSON: {"format": "tandem-compute-profile/1", "model", "machine", "threads", "weights",
//        "created", "prefill": {"tokens": [...], "seconds": [...]},
//        "decode": {"batch": [...], "seconds": [...], "context": N},
//        "attention_seconds_per_position": a, "scale": 1.0}
struct ComputeProfile {
  std::string model;    // label: the checkpoint it was measured with
  std::string machine;  // label: CPU, cores, load while measured
  // Seconds of a forward over one prompt chunk of x tokens starting at position 0.
  TimingCurve prefill;
  // Seconds of a decode step of x rows, each attending `decode_context` positions.
  TimingCurve decode;
  int64_t decode_context = 0;
  // Extra seconds per (row × attended position) away from the measured shapes: prefill chunks
  // that start past position 0, decode rows whose context differs from decode_context.
  double attention_seconds_per_position = 0;
  // Every step's time is multiplied by this (a faster or slower machine). Default: 1.
  double scale = 1.0;

  // Seconds `batch` takes. A step with prefill tokens is costed on the prefill curve at its
  // total tokens (the CPU backend runs decode rows and prefill chunks as one batch); a
  // decode-only step on the decode curve at its rows. Never below 0.
  double StepSeconds(const ForwardBatch& batch) const;
};

// INVALID_ARGUMENT naming the field (missing curves, x not ascending, negative seconds).
StatusOr<ComputeProfile> ParseComputeProfile(std::string_view json);
// NOT_FOUND when the file is missing, else as ParseComputeProfile (the message names the file).
StatusOr<ComputeProfile> LoadComputeProfile(const std::filesystem::path& path);

struct SimRunnerOptions {
  ComputeProfile profile;
  // How the runner waits `seconds` after writing one layer (step time / layers each). Default
  // (unset): sleeps until the step's start plus the running total, so the time spent writing
  // pages counts inside the step. Tests set a recorder.
  std::function<void(double seconds)> wait;
};

std::unique_ptr<ModelRunner> CreateSimRunner(const ModelConfig& config, SimRunnerOptions options);

}  // namespace tandem
