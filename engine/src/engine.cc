#include "tandem/engine/engine.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/format.h>

#include "tandem/common/hash.h"
#include "tandem/common/logging.h"
#include "tandem/engine/cpu_runner.h"
#include "tandem/engine/cuda_runner.h"
#include "tandem/engine/gguf.h"
#include "tandem/engine/model_identity.h"
#include "tandem/engine/sim_runner.h"

namespace tandem {
namespace {

// The simulated backend's model hash: config.json (or the GGUF path's config) and a marker, so
// no weights are read and a simulated worker never exchanges pages with a real one.
StatusOr<uint64_t> SimulatedModelHash(const std::filesystem::path& dir, const ModelConfig& c) {
  std::string bytes = "tandem-simulated-compute\n";
  std::ifstream in(dir / "config.json");
  if (in) {
    std::stringstream ss;
    ss << in.rdbuf();
    bytes += ss.str();
  } else {
    bytes += fmt::format("{} {} {} {} {} {}", c.arch_name, c.num_layers, c.hidden_size,
                         c.num_kv_heads, c.head_dim, c.vocab_size);
  }
  return Hash64(bytes);
}

}  // namespace

StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::filesystem::path& dir,
                                               const EngineOptions& options) {
  if (options.page_size <= 0) {
    return InvalidArgumentError("page_size must be > 0, got {}", options.page_size);
  }
  auto e = std::unique_ptr<Engine>(new Engine());
  e->dir_ = dir;
  TANDEM_ASSIGN_OR_RETURN(e->config_, LoadModelConfig(dir));
  const bool simulated = !options.simulate_compute.empty();
  std::unique_ptr<ModelWeights> weights;
  if (simulated) {
    TANDEM_ASSIGN_OR_RETURN(e->model_hash_, SimulatedModelHash(dir, e->config_));
  } else {
    TANDEM_ASSIGN_OR_RETURN(weights, ModelWeights::Load(dir, e->config_));
    // After the weights: a malformed checkpoint is reported by the loader, with its messages.
    TANDEM_ASSIGN_OR_RETURN(e->model_hash_, ModelHash(dir));
  }
  // A GGUF file always carries its vocabulary; a folder may come without a tokenizer.
  if (IsGgufPath(dir) || std::filesystem::exists(dir / "tokenizer.json") ||
      std::filesystem::exists(dir / "tokenizer.model")) {
    TANDEM_ASSIGN_OR_RETURN(e->tokenizer_, LoadTokenizer(dir));
  }
  if (simulated) {
    SimRunnerOptions so;
    TANDEM_ASSIGN_OR_RETURN(so.profile, LoadComputeProfile(options.simulate_compute));
    e->runner_ = CreateSimRunner(e->config_, std::move(so));
  } else if (options.device == Device::kCuda) {
    CudaRunnerOptions co;
    co.device = options.cuda_device;
    co.weights = options.weights;
    co.deterministic = options.deterministic;
    TANDEM_ASSIGN_OR_RETURN(e->runner_, CreateCudaRunner(e->config_, std::move(weights), co));
  } else {
    if (options.deterministic) {
      TLOG_INFO("the CPU backend is always deterministic (batch-invariant); nothing to change");
    }
    CpuRunnerOptions ro;
    ro.weights = options.weights;
    ro.num_threads = options.num_threads;
    TANDEM_ASSIGN_OR_RETURN(e->runner_, CreateCpuRunner(e->config_, std::move(weights), ro));
  }
  const KvGeometry geometry = e->runner_->KvGeometryFor(options.page_size);
  int64_t kv_bytes = options.kv_cache_bytes;
  if (kv_bytes == 0) {
    const std::optional<int64_t> free = e->runner_->FreeMemoryBytes();
    if (!free) {
      return InvalidArgumentError(
          "the {} backend needs an explicit KV cache size (kv_cache_bytes 0 means a share of a "
          "GPU's free memory)",
          simulated                         ? "simulated"
          : options.device == Device::kCuda ? "CUDA"
                                            : "CPU");
    }
    kv_bytes = *free / 10 * 9;
  }
  const int64_t blocks = kv_bytes / static_cast<int64_t>(geometry.BlockBytes());
  if (blocks < 1) {
    return InvalidArgumentError("kv_cache_bytes {} is smaller than one block ({} bytes)", kv_bytes,
                                geometry.BlockBytes());
  }
  if (blocks > std::numeric_limits<int32_t>::max()) {
    return InvalidArgumentError("kv_cache_bytes {} gives more than 2^31 blocks", kv_bytes);
  }
  std::unique_ptr<PagePool> pool;
  if (options.kv_shared_memory && (options.device == Device::kCpu || simulated)) {
    TANDEM_ASSIGN_OR_RETURN(pool, HostPagePool::Create(geometry, static_cast<int32_t>(blocks),
                                                       /*shared=*/true));
  } else {
    TANDEM_ASSIGN_OR_RETURN(pool, e->runner_->CreatePagePool(geometry, static_cast<int32_t>(blocks),
                                                             options.kv_device_export));
  }
  e->kv_cache_ = std::make_unique<KvCache>(std::move(pool));
  if (options.prefix_cache) {
    e->prefix_cache_ = std::make_unique<PrefixCache>(e->kv_cache_->allocator(), e->model_hash_,
                                                     e->kv_cache_->geometry());
  }
  e->eos_ids_ = e->config_.eos_token_ids;
  if (e->eos_ids_.empty() && e->tokenizer_ && e->tokenizer_->eos_id()) {
    e->eos_ids_.push_back(*e->tokenizer_->eos_id());
  }
  TLOG_INFO(
      "loaded {} ({} layers, hidden {}, vocab {}) from {}; {}; KV cache {} blocks of {} tokens",
      e->config_.arch_name, e->config_.num_layers, e->config_.hidden_size, e->config_.vocab_size,
      dir.string(), e->runner_->Describe(), blocks, options.page_size);
  return e;
}

int32_t Engine::kv_blocks_in_use() const {
  return prefix_cache_ ? prefix_cache_->BlocksInUse() : kv_cache_->allocator().num_used();
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
