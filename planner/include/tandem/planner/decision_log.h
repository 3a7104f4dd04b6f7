// The decision log: one JSON object per line and per interval, with what was read (inputs), what
// was decided per pool (outputs) and why, and what the actuator answered.
//
//   {"time":"2026-12-03T17:40:00.123Z","advisory":false,"source":"prometheus","read_error":null,
//    "inputs":{"prompt_tokens_per_s":812.5,...,"missing":[]},
//    "pools":[{"pool":"prefill","current":2,"ready":2,"desired":3,"action":"up",
//              "feed_forward":3,"capacity_tokens_per_s":400,"reason":"...","applied":true,
//              "error":null}, {...decode...}]}
//
// Thread safety: Write may be called from several threads (lines never interleave).
#pragma once

#include <array>
#include <cstdio>
#include <mutex>
#include <string>

#include "tandem/common/status.h"
#include "tandem/planner/observation.h"
#include "tandem/planner/policy.h"

namespace tandem::planner {

// What happened to one pool's decision: "" = applied or nothing to do, else why not.
struct Outcome {
  bool applied = false;
  std::string error;
};

std::string DecisionJson(const Decision& decision, const Observation& obs,
                         const std::string& read_error, bool advisory,
                         const std::array<Outcome, kPools>& outcomes, const std::string& time);

class DecisionLog {
 public:
  // "" or "-" = stderr; else appends to the file (INVALID_ARGUMENT naming it when it cannot).
  static StatusOr<std::unique_ptr<DecisionLog>> Open(const std::string& path);
  ~DecisionLog();
  void Write(const std::string& line);

 private:
  DecisionLog(std::FILE* f, bool owned) : f_(f), owned_(owned) {}
  std::mutex mu_;
  std::FILE* f_;
  bool owned_;
};

}  // namespace tandem::planner
