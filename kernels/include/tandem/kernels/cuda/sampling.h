// GPU sampler: the CPU sampler (engine/src/sampling/sampler.cc, the spec) on fp32 logits, row
// by row, with the same penalties, temperature, top-k / top-p / min-p and Philox4x32-10 draw
// u = PhiloxUniform(seed, counter = position, lane = 0). Every fp32 operation is done in the
// CPU's order and rounding (no fused multiply-adds where the CPU has none), so the token and
// its log-probability are bit-identical to the CPU's, with one caveat: exp and log are
// computed as float(exp(double)) / float(log(double)), i.e. correctly rounded except in
// vanishingly rare double-rounding cases, while glibc's expf/logf are correctly rounded in all
// but rare cases too; a difference there could flip a draw sitting exactly on a boundary.
// top_logprobs are not produced here (compute them from the raw logits separately).
//
// Cost (correctness first): the CPU's left-to-right sums (CDF walk, top-k/top-p masses) are
// inherently serial and run on one thread per row; top-k/top-p/min-p sort the whole row with
// a segmented radix sort. UNVERIFIED ON HARDWARE.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tandem/kernels/cuda/common.h"

namespace tandem::cuda {

// Per-row sampling parameters (mirror tandem::SamplingParams, already validated).
struct SampleRowParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0;
  int64_t position = 0;  // sequence position of the token being sampled (Philox counter)
};

struct SampleParams {
  const float* logits = nullptr;                // [rows, vocab]
  const SampleRowParams* row_params = nullptr;  // [rows] (device memory)
  const int32_t* history = nullptr;             // [history_offsets[rows]]: per row its prompt
                                                // ids, then its generated ids
  const int64_t* history_offsets = nullptr;     // [rows + 1], history_offsets[0] = 0
  const int32_t* prompt_lens = nullptr;         // [rows] leading prompt ids in each row's history
  int32_t* out_tokens = nullptr;                // [rows]; -1 if a row needed the sort that
                                                // any_filter = false skipped
  float* out_logprobs = nullptr;                // [rows] raw log-softmax of the token, or nullptr
  int64_t rows = 0;
  int64_t vocab = 0;
  // Host-side hint: false promises no row enables top-k / top-p / min-p and skips the sort.
  bool any_filter = true;
  void* workspace = nullptr;  // SampleWorkspaceBytes(rows, vocab) bytes
  size_t workspace_bytes = 0;
};

// Scratch for `rows` x `vocab` (about 20 bytes per logit plus the sort's temporary storage).
cudaError_t SampleWorkspaceBytes(int64_t rows, int64_t vocab, size_t* bytes);

cudaError_t LaunchSample(const SampleParams& p, cudaStream_t stream);

// Philox4x32-10 uniform for (seed, counter, lane), as tandem::PhiloxUniform: out[i] for
// counter = counters[i]. For tests and for callers that draw their own numbers.
cudaError_t LaunchPhiloxUniform(uint64_t seed, const uint64_t* counters,  // [n]
                                uint32_t lane, int64_t n,
                                float* out,  // [n]
                                cudaStream_t stream);

}  // namespace tandem::cuda
