// `tandem bench` workloads: what each request asks for, when it is sent, and what came back.
//
// Synthetic requests carry random token ids (so prompt lengths are exact on every target) and
// ask for an exact number of output tokens (ignore_eos), like vLLM's random dataset; a JSONL
// file gives real prompts: one object per line with "prompt" (text) or "messages" (chat), and
// optionally "max_tokens".
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tandem/common/status.h"

namespace tandem::bench {

using Clock = std::chrono::steady_clock;

struct BenchRequest {
  std::vector<int32_t> prompt_ids;                            // synthetic
  std::string prompt_text;                                    // JSONL "prompt"
  std::vector<std::pair<std::string, std::string>> messages;  // JSONL "messages" (role, content)
  int32_t max_tokens = 128;
  bool ignore_eos = true;
  float temperature = 0.0f;
  uint64_t seed = 0;
};

struct RequestResult {
  bool ok = false;
  std::string error;
  double sent_s = 0;          // since the run started
  double ttft_s = 0;          // sent → first token
  double e2e_s = 0;           // sent → last token / end
  std::vector<double> itl_s;  // gaps between consecutive arrivals of output
  int32_t prompt_tokens = 0;
  int32_t output_tokens = 0;
  std::vector<int32_t> output_ids;  // the answer's token ids (gRPC and engine targets)
};

struct SyntheticSpec {
  int32_t num_requests = 32;
  int32_t input_len = 128;
  int32_t output_len = 128;
  // Lengths drawn uniformly from [len·(1−r), len·(1+r)]. Default: 0 (fixed).
  double range_ratio = 0.0;
  // Token ids are drawn from [id_low, id_high). Default: [1000, 20000), ordinary text tokens of
  // most vocabularies.
  int32_t id_low = 1000;
  int32_t id_high = 20000;
  uint64_t seed = 0;
};

std::vector<BenchRequest> SyntheticRequests(const SyntheticSpec& spec);

// Reads a JSONL file; lines without max_tokens get `default_max_tokens`. INVALID_ARGUMENT naming
// the line for a bad one.
StatusOr<std::vector<BenchRequest>> JsonlRequests(const std::string& path,
                                                  int32_t default_max_tokens);

// Arrival offsets (seconds from the start) of `n` requests: a Poisson process at `rate`
// requests/s, or all at 0 when rate <= 0 (a fixed concurrency then paces them).
std::vector<double> ArrivalTimes(int32_t n, double rate, uint64_t seed);

}  // namespace tandem::bench
