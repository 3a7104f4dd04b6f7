#include "tandem/engine/engine.h"

#include <algorithm>

#include "tandem/common/logging.h"
#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/gguf.h"

namespace tandem {

StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::filesystem::path& dir,
                                               const EngineOptions& options) {
  if (options.page_size <= 0) {
    return InvalidArgumentError("page_size must be > 0, got {}", options.page_size);
  }
  if (options.num_threads > 0) {
    cpu::SetNumThreads(options.num_threads);
  }
  auto e = std::unique_ptr<Engine>(new Engine());
  e->dir_ = dir;
  TANDEM_ASSIGN_OR_RETURN(e->config_, LoadModelConfig(dir));
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> weights,
                          ModelWeights::Load(dir, e->config_));
  // A GGUF file always carries its vocabulary; a folder may come without a tokenizer.
  if (IsGgufPath(dir) || std::filesystem::exists(dir / "tokenizer.json") ||
      std::filesystem::exists(dir / "tokenizer.model")) {
    TANDEM_ASSIGN_OR_RETURN(e->tokenizer_, LoadTokenizer(dir));
  }
  e->model_ = std::make_unique<CpuModel>(e->config_, std::move(weights), options.weights);
  const KvLayout layout = e->model_->MakeKvLayout(options.page_size);
  const int64_t blocks = options.kv_cache_bytes / static_cast<int64_t>(layout.BlockBytes());
  if (blocks < 1) {
    return InvalidArgumentError("kv_cache_bytes {} is smaller than one block ({} bytes)",
                                options.kv_cache_bytes, layout.BlockBytes());
  }
  e->kv_cache_ = std::make_unique<KvCache>(layout, static_cast<int32_t>(blocks));
  e->eos_ids_ = e->config_.eos_token_ids;
  if (e->eos_ids_.empty() && e->tokenizer_ && e->tokenizer_->eos_id()) {
    e->eos_ids_.push_back(*e->tokenizer_->eos_id());
  }
  TLOG_INFO(
      "loaded {} ({} layers, hidden {}, vocab {}) from {}; {} weights ({}); KV cache {} blocks "
      "of {} tokens",
      e->config_.arch_name, e->config_.num_layers, e->config_.hidden_size, e->config_.vocab_size,
      dir.string(), kernels::cpu::WeightStorageName(options.weights), kernels::cpu::GemmTarget(),
      blocks, options.page_size);
  return e;
}

std::string_view FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone:
      return "none";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

}  // namespace tandem
