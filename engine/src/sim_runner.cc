#include "tandem/engine/sim_runner.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tandem/common/hash.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kChainMask = 0xFFFFFF;  // chain values are 24-bit: exact as f32
constexpr uint32_t kChainStart = 0x5EED01;

uint64_t Mix(uint64_t a, uint64_t b, uint64_t c) {
  const uint64_t v[3] = {a, b, c};
  return Hash64(v, sizeof(v), 0x51A7ULL);
}

// The chain value of the token at `pos` whose predecessor's chain value is `prev`.
uint32_t ChainNext(uint32_t prev, int32_t token, int64_t pos) {
  return static_cast<uint32_t>(Mix(prev, static_cast<uint32_t>(token), pos)) & kChainMask;
}

// What a K (or V) slot of `layer` holds for chain value `chain`: layer 0's K is the chain value
// itself (read back by the next token), every other value a per-layer scramble of it.
float SlotValue(uint32_t chain, int32_t layer, bool value) {
  if (layer == 0 && !value) return static_cast<float>(chain);
  const uint32_t salt = static_cast<uint32_t>(Mix(layer, value ? 2 : 1, 0x5A17));
  return static_cast<float>((chain ^ salt) & kChainMask);
}

Status CheckCurve(const TimingCurve& c, std::string_view name) {
  if (c.x.empty() || c.x.size() != c.seconds.size()) {
    return InvalidArgumentError("compute profile: {} needs as many x as seconds, at least one",
                                name);
  }
  for (size_t i = 0; i < c.x.size(); ++i) {
    if (c.seconds[i] < 0)
      return InvalidArgumentError("compute profile: {} has negative seconds", name);
    if (i > 0 && c.x[i] <= c.x[i - 1]) {
      return InvalidArgumentError("compute profile: {} x values must ascend", name);
    }
  }
  return Status::Ok();
}

class SimRunner final : public ModelRunner {
 public:
  SimRunner(const ModelConfig& config, SimRunnerOptions options)
      : config_(config), options_(std::move(options)) {}

  const ModelConfig& config() const override { return config_; }
  std::string Describe() const override {
    return fmt::format("simulated compute: profile of {} on {} (scale {})", options_.profile.model,
                       options_.profile.machine, options_.profile.scale);
  }
  int64_t weight_bytes() const override { return 0; }
  KvGeometry KvGeometryFor(int32_t page_size) const override {
    // The CPU backend's pages: the same bytes move.
    return KvGeometryOf(config_, page_size, DType::kF32);
  }
  using ModelRunner::CreatePagePool;
  StatusOr<std::unique_ptr<PagePool>> CreatePagePool(const KvGeometry& geometry, int32_t num_blocks,
                                                     bool exportable) override {
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<HostPagePool> pool,
                            HostPagePool::Create(geometry, num_blocks, /*shared=*/exportable));
    return std::unique_ptr<PagePool>(std::move(pool));
  }

  Status Forward(const ForwardBatch& batch, KvCache& cache,
                 const LayerWrittenFn& on_layer_written) override;
  Status Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) override;
  Status CopyLogits(std::vector<float>* out) const override {
    // No logits are computed: zeros, [rows, vocab].
    out->assign(static_cast<size_t>(row_chain_.size()) * config_.vocab_size, 0.0f);
    return Status::Ok();
  }

 private:
  ModelConfig config_;
  SimRunnerOptions options_;
  // Chain value of each logits row of the last Forward (ForwardBatch's row order).
  std::vector<uint32_t> row_chain_;
};

Status SimRunner::Forward(const ForwardBatch& batch, KvCache& cache,
                          const LayerWrittenFn& on_layer_written) {
  const Clock::time_point start = Clock::now();
  row_chain_.clear();
  const KvGeometry& kv = cache.geometry();
  if (kv.num_layers != config_.num_layers || kv.num_kv_heads != config_.num_kv_heads ||
      kv.head_dim != config_.head_dim || kv.dtype != DType::kF32 ||
      cache.pool().memory() != PageMemory::kHost) {
    return FailedPreconditionError("KV cache ({} pages) does not match the model",
                                   cache.pool().kind());
  }
  TANDEM_RETURN_IF_ERROR(ValidateForwardBatch(batch, config_, kv.page_size));
  // Chain values of every input token (rows: decode, then prefill chunks), from the page slot
  // before each chunk (layer 0's K), which this process wrote or received.
  struct Slot {
    int32_t block, offset;
    uint32_t chain;
  };
  std::vector<Slot> slots;
  slots.reserve(batch.NumTokens());
  std::vector<uint32_t> rows;
  for (const auto* list : {&batch.decode, &batch.prefill}) {
    for (const ForwardChunk& ch : *list) {
      uint32_t chain = kChainStart;
      if (ch.start_pos > 0) {
        const int64_t p = ch.start_pos - 1;
        chain = static_cast<uint32_t>(
                    *cache.Key(0, ch.block_table[p / kv.page_size], p % kv.page_size)) &
                kChainMask;
      }
      for (size_t t = 0; t < ch.tokens.size(); ++t) {
        const int64_t pos = ch.start_pos + static_cast<int64_t>(t);
        chain = ChainNext(chain, ch.tokens[t], pos);
        slots.push_back(
            {ch.block_table[pos / kv.page_size], static_cast<int32_t>(pos % kv.page_size), chain});
      }
      if (ch.want_logits) rows.push_back(chain);
    }
  }
  const double step = options_.profile.StepSeconds(batch);
  const int32_t layers = config_.num_layers;
  const int64_t elems = kv.TokenElems();
  double waited = 0;
  for (int32_t l = 0; l < layers; ++l) {
    for (const Slot& s : slots) {
      float* k = cache.Key(l, s.block, s.offset);
      float* v = cache.Value(l, s.block, s.offset);
      std::fill(k, k + elems, SlotValue(s.chain, l, false));
      std::fill(v, v + elems, SlotValue(s.chain, l, true));
    }
    if (on_layer_written) on_layer_written(l);
    const double share = step / layers;
    if (options_.wait) {
      options_.wait(share);
    } else {
      waited += share;
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(waited)));
    }
  }
  row_chain_ = std::move(rows);
  return Status::Ok();
}

Status SimRunner::Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) {
  if (rows.size() > row_chain_.size()) {
    return InvalidArgumentError("{} rows to sample, the last forward produced {} logits rows",
                                rows.size(), row_chain_.size());
  }
  // Tokens from [base, vocab), skipping EOS ids; ids below base are mostly special tokens.
  const int32_t vocab = config_.vocab_size;
  const int32_t base = vocab > 2048 ? 1024 : 0;
  out->resize(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const SampleRow& row = rows[r];
    const uint64_t seed = row.params != nullptr ? row.params->seed : 0;
    int32_t token =
        base + static_cast<int32_t>(Mix(row_chain_[r], seed, row.position) % (vocab - base));
    while (std::find(config_.eos_token_ids.begin(), config_.eos_token_ids.end(), token) !=
           config_.eos_token_ids.end()) {
      token = base + (token - base + 1) % (vocab - base);
    }
    SampleResult& res = (*out)[r];
    res = SampleResult{};
    res.token = token;
    res.logprob = 0.0f;
    const int32_t top = row.params != nullptr ? row.params->top_logprobs : 0;
    for (int32_t i = 0; i < top; ++i) {
      res.top_logprobs.push_back({base + (token - base + i) % (vocab - base), -1.0f * i});
    }
  }
  return Status::Ok();
}

}  // namespace

double TimingCurve::At(double v) const {
  if (x.empty()) return 0;
  if (v <= x.front() || x.size() == 1) {
    if (x.size() == 1 && v > x.front() && x.front() > 0) return seconds.front() * v / x.front();
    return seconds.front();
  }
  size_t i = 1;
  while (i + 1 < x.size() && v > x[i]) ++i;
  const double slope = (seconds[i] - seconds[i - 1]) / (x[i] - x[i - 1]);
  return seconds[i - 1] + slope * (v - x[i - 1]);
}

double ComputeProfile::StepSeconds(const ForwardBatch& batch) const {
  int64_t prefill_tokens = 0;
  double extra_positions = 0;  // attended positions beyond the measured shapes
  for (const ForwardChunk& ch : batch.prefill) {
    prefill_tokens += static_cast<int64_t>(ch.tokens.size());
    extra_positions += static_cast<double>(ch.tokens.size()) * static_cast<double>(ch.start_pos);
  }
  const int64_t rows = static_cast<int64_t>(batch.decode.size());
  double t = 0;
  if (prefill_tokens > 0) {
    for (const ForwardChunk& ch : batch.decode)
      extra_positions += static_cast<double>(ch.start_pos);
    t = prefill.At(static_cast<double>(prefill_tokens + rows));
  } else if (rows > 0) {
    for (const ForwardChunk& ch : batch.decode) {
      extra_positions += static_cast<double>(ch.start_pos + 1 - decode_context);
    }
    t = decode.At(static_cast<double>(rows));
  }
  t += attention_seconds_per_position * extra_positions;
  return std::max(0.0, t * scale);
}

StatusOr<ComputeProfile> ParseComputeProfile(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError("compute profile: not a JSON object");
  }
  ComputeProfile p;
  try {
    p.model = j.value("model", "");
    p.machine = j.value("machine", "");
    if (!j.contains("prefill") || !j.contains("decode")) {
      return InvalidArgumentError("compute profile: needs \"prefill\" and \"decode\"");
    }
    p.prefill.x = j["prefill"].at("tokens").get<std::vector<double>>();
    p.prefill.seconds = j["prefill"].at("seconds").get<std::vector<double>>();
    p.decode.x = j["decode"].at("batch").get<std::vector<double>>();
    p.decode.seconds = j["decode"].at("seconds").get<std::vector<double>>();
    p.decode_context = j["decode"].value("context", int64_t{0});
    p.attention_seconds_per_position = j.value("attention_seconds_per_position", 0.0);
    p.scale = j.value("scale", 1.0);
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgumentError("compute profile: {}", e.what());
  }
  TANDEM_RETURN_IF_ERROR(CheckCurve(p.prefill, "prefill"));
  TANDEM_RETURN_IF_ERROR(CheckCurve(p.decode, "decode"));
  if (p.scale <= 0) return InvalidArgumentError("compute profile: scale must be > 0");
  if (p.attention_seconds_per_position < 0) {
    return InvalidArgumentError("compute profile: attention_seconds_per_position must be >= 0");
  }
  return p;
}

StatusOr<ComputeProfile> LoadComputeProfile(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("compute profile {}: cannot read it", path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  auto p = ParseComputeProfile(ss.str());
  if (!p.ok()) {
    return Status(p.status().code(), fmt::format("{}: {}", path.string(), p.status().message()));
  }
  return p;
}

std::unique_ptr<ModelRunner> CreateSimRunner(const ModelConfig& config, SimRunnerOptions options) {
  return std::make_unique<SimRunner>(config, std::move(options));
}

}  // namespace tandem
