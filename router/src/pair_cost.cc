#include "tandem/router/pair_cost.h"

#include <algorithm>

namespace tandem {

TtftEstimate EstimateTtft(const TtftInputs& in) {
  TtftEstimate e;
  const double tps =
      in.tokens_per_second > 0 ? in.tokens_per_second : TransferRates::kDefaultTokensPerSecond;
  e.queue_seconds = static_cast<double>(std::max<int64_t>(in.queued_tokens, 0)) / tps;
  e.compute_seconds = static_cast<double>(std::max<int64_t>(in.compute_tokens, 0)) / tps;
  if (in.ship_bytes > 0 && in.bytes_per_second > 0) {
    const double all = static_cast<double>(in.ship_bytes) / in.bytes_per_second;
    const double layers = std::max(in.num_layers, 1);
    // Layer l leaves once it is computed: all but the last layer's compute overlaps the wire.
    const double overlapped = e.compute_seconds * (layers - 1) / layers;
    e.transfer_seconds = std::max(all / layers, all - overlapped);
  }
  return e;
}

double TransferRates::DefaultBytesPerSecond(const std::string& transport) {
  if (transport == "shm") return 8e9;
  if (transport == "nccl") return 20e9;
  if (transport == "cuda_ipc") return 100e9;  // device to device on one host (NVLink or one GPU)
  return 1e9;
}

namespace {

void Blend(double* avg, double sample) {
  *avg = *avg > 0 ? (1 - TransferRates::kWeight) * *avg + TransferRates::kWeight * sample : sample;
}

}  // namespace

void TransferRates::ObservePrefill(const std::string& prefill_id, int64_t computed_tokens,
                                   double compute_seconds) {
  if (computed_tokens <= 0 || compute_seconds < 1e-3) return;
  std::lock_guard<std::mutex> lock(mu_);
  Blend(&prefill_[prefill_id], static_cast<double>(computed_tokens) / compute_seconds);
}

void TransferRates::ObserveTransfer(const std::string& prefill_id, const std::string& decode_id,
                                    const std::string& transport, int64_t bytes,
                                    double wire_seconds) {
  if (bytes < kMinTransferBytes || wire_seconds < 1e-6) return;
  std::lock_guard<std::mutex> lock(mu_);
  Blend(&pairs_[{prefill_id, decode_id, transport}], static_cast<double>(bytes) / wire_seconds);
}

double TransferRates::TokensPerSecond(const std::string& prefill_id) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = prefill_.find(prefill_id); it != prefill_.end()) return it->second;
  if (prefill_.empty()) return kDefaultTokensPerSecond;
  double sum = 0;
  for (const auto& [id, rate] : prefill_) sum += rate;
  return sum / static_cast<double>(prefill_.size());
}

double TransferRates::BytesPerSecond(const std::string& prefill_id, const std::string& decode_id,
                                     const std::string& transport) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = pairs_.find({prefill_id, decode_id, transport}); it != pairs_.end()) {
    return it->second;
  }
  double sum = 0;
  int n = 0;
  for (const auto& [key, rate] : pairs_) {
    if (std::get<2>(key) != transport) continue;
    sum += rate;
    ++n;
  }
  return n > 0 ? sum / n : DefaultBytesPerSecond(transport);
}

std::vector<std::pair<std::string, double>> TransferRates::prefill_rates() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {prefill_.begin(), prefill_.end()};
}

std::vector<TransferRates::PairRate> TransferRates::pair_rates() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<PairRate> out;
  for (const auto& [key, rate] : pairs_) {
    out.push_back({std::get<0>(key), std::get<1>(key), std::get<2>(key), rate});
  }
  return out;
}

}  // namespace tandem
