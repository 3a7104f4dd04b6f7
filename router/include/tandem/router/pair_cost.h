// The router's estimate of a request's time to first token on one (prefill, decode) pair, and
// the rates it is made from, learned from the workers' own Prefill replies:
//
//   queue    = tokens queued on the prefill worker (still to compute) / its tokens per second
//   compute  = the prompt's tokens it lacks in its prefix cache / its tokens per second
//   transfer = what shipping adds after the compute: layers leave as they are computed, so
//              max(one layer's share of the bytes, all bytes - what overlapped the compute)
//              over the pair's bytes per second
//
// The bytes are the prompt's pages the decode worker lacks (its prefix cache holds the rest).
// Tokens per second: a prefill worker's computed tokens over its compute seconds (moving
// average). Bytes per second: a pair's transfer bytes over the seconds its I/O thread spent on
// them (PrefillResponse.transfer_wire_seconds), so a compute-bound transfer still measures the
// link. Before a worker or pair has a measurement: the mean of the others (of that transport,
// for a pair), else a default: 2,000 tokens/s; shm 8 GB/s, nccl 20 GB/s, tcp 1 GB/s (only the
// order matters until the first reply).
//
// Thread safety: every method may be called concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace tandem {

struct TtftEstimate {
  double queue_seconds = 0;
  double compute_seconds = 0;
  double transfer_seconds = 0;
  double total() const { return queue_seconds + compute_seconds + transfer_seconds; }
};

struct TtftInputs {
  int64_t queued_tokens = 0;     // on the prefill worker, still to compute
  int64_t compute_tokens = 0;    // of this prompt, not in the prefill worker's cache
  double tokens_per_second = 0;  // the prefill worker's
  int64_t ship_bytes = 0;        // pages the decode worker lacks, every layer
  double bytes_per_second = 0;   // the pair's
  int32_t num_layers = 1;        // the model's (transfers go layer by layer)
};

TtftEstimate EstimateTtft(const TtftInputs& in);

class TransferRates {
 public:
  static constexpr double kDefaultTokensPerSecond = 2000;
  static double DefaultBytesPerSecond(const std::string& transport);
  // Weight of a new measurement in the moving averages.
  static constexpr double kWeight = 0.3;

  // From a Prefill reply. Measurements too small to mean anything are ignored: no computed
  // token or under 1 ms of compute; transfers under kMinTransferBytes, whose wire time is mostly
  // the per-layer frames' fixed cost (on loopback, 64 KiB over shm measured 0.6 GB/s).
  static constexpr int64_t kMinTransferBytes = int64_t{4} << 20;
  void ObservePrefill(const std::string& prefill_id, int64_t computed_tokens,
                      double compute_seconds);
  void ObserveTransfer(const std::string& prefill_id, const std::string& decode_id,
                       const std::string& transport, int64_t bytes, double wire_seconds);

  double TokensPerSecond(const std::string& prefill_id) const;
  double BytesPerSecond(const std::string& prefill_id, const std::string& decode_id,
                        const std::string& transport) const;

  // What was measured, for the metrics: (prefill id, tokens/s) and
  // ((prefill id, decode id, transport), bytes/s).
  std::vector<std::pair<std::string, double>> prefill_rates() const;
  struct PairRate {
    std::string prefill_id, decode_id, transport;
    double bytes_per_second = 0;
  };
  std::vector<PairRate> pair_rates() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, double> prefill_;                                      // tokens/s
  std::map<std::tuple<std::string, std::string, std::string>, double> pairs_;  // bytes/s
};

}  // namespace tandem
