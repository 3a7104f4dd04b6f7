// Helpers the GenerateCall sources share (generate_call.cc, generate_call_phases.cc,
// generate_call_failover.cc).
#pragma once

#include <chrono>
#include <string>

namespace tandem::generate_call_internal {

inline double Seconds(std::chrono::steady_clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// "rtr-<random>-<counter>": unique across router restarts (workers key transfers by its hash).
std::string NewRequestId();

}  // namespace tandem::generate_call_internal
