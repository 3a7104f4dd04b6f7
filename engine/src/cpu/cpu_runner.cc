#include "tandem/engine/cpu_runner.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>

#include <fmt/format.h>

#include "tandem/engine/cpu_ops.h"
#include "tandem/kernels/cpu/gemm.h"

namespace tandem {
namespace {

using kernels::cpu::PackedWeight;

// The packed copy replaces a matrix viewed in place in the checkpoint mapping: hand those pages
// back (reading them again would fault them in from the file, so this is always safe).
void ReleaseMapped(const WeightTensor& t) {
  if (t.raw == nullptr || !t.owned.empty()) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.raw);
  const uintptr_t begin = (start + page - 1) & ~(page - 1);
  const uintptr_t end = (start + DTypeBytes(t.dtype, t.shape[0] * t.shape[1])) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// How a matrix stored as `dtype` in the checkpoint is kept when no storage is asked for: as it
// is (exact), f16 — which the kernels do not store — as f32.
DType StorageFor(DType dtype) { return dtype == DType::kF16 ? DType::kF32 : dtype; }

class CpuRunner final : public ModelRunner {
 public:
  // `storage` unset: each matrix keeps its own checkpoint dtype (f16 → f32).
  CpuRunner(const ModelConfig& config, std::unique_ptr<ModelWeights> weights,
            std::optional<DType> storage)
      : config_(config),
        weights_(std::move(weights)),
        inv_freq_(cpu::RopeInvFreq(config)),
        storage_(storage) {}

  Status Init();

  const ModelConfig& config() const override { return config_; }
  std::string Describe() const override {
    return fmt::format("cpu: {} weights ({} MiB), {}",
                       storage_ ? DTypeName(*storage_) : "checkpoint-dtype", weight_bytes() >> 20,
                       kernels::cpu::GemmTarget());
  }
  int64_t weight_bytes() const override { return weight_bytes_; }

  KvGeometry KvGeometryFor(int32_t page_size) const override {
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
    out->assign(logits_.begin(), logits_.begin() + num_logit_rows_ * config_.vocab_size);
    return Status::Ok();
  }

 private:
  StatusOr<PackedWeight> Pack(const WeightTensor& t);
  // out[n, m] = x[n, k] · wᵀ (+ bias), batch-invariant (see kernels/cpu/gemm.h).
  static void Linear(const float* x, int64_t n, const PackedWeight& w, const float* bias,
                     float* out) {
    kernels::cpu::Gemm(x, n, w, bias, out, cpu::NumThreads());
  }

  ModelConfig config_;
  std::unique_ptr<ModelWeights> weights_;
  std::vector<float> inv_freq_;
  std::optional<DType> storage_;
  // The matrices of each layer and the LM head, packed for kernels::cpu::Gemm.
  struct PackedLayer {
    PackedWeight q, k, v, o, gate, up, down;
  };
  std::vector<PackedLayer> packed_;
  PackedWeight lm_head_;
  PackedWeight embed_;  // empty when tied: rows come from lm_head_
  const PackedWeight& embedding() const { return embed_.empty() ? lm_head_ : embed_; }
  int64_t weight_bytes_ = 0;
  // The last Forward's logits, [num_logit_rows_, vocab].
  std::vector<float> logits_;
  int64_t num_logit_rows_ = 0;
};

StatusOr<PackedWeight> CpuRunner::Pack(const WeightTensor& t) {
  TANDEM_ASSIGN_OR_RETURN(PackedWeight p,
                          PackedWeight::Pack(t.raw, t.dtype, t.shape[0], t.shape[1],
                                             storage_.value_or(StorageFor(t.dtype))));
  weight_bytes_ += p.bytes();
  return p;
}

Status CpuRunner::Init() {
  if (storage_ && !kernels::cpu::IsWeightStorage(*storage_)) {
    return InvalidArgumentError(
        "the CPU backend stores weights as f32, bf16, q8_0, q4_0 or q4_1, not {}",
        DTypeName(*storage_));
  }
  for (const LayerWeights& L : weights_->layers) {
    PackedLayer P;
    TANDEM_ASSIGN_OR_RETURN(P.q, Pack(L.q_proj));
    TANDEM_ASSIGN_OR_RETURN(P.k, Pack(L.k_proj));
    TANDEM_ASSIGN_OR_RETURN(P.v, Pack(L.v_proj));
    TANDEM_ASSIGN_OR_RETURN(P.o, Pack(L.o_proj));
    TANDEM_ASSIGN_OR_RETURN(P.gate, Pack(L.gate_proj));
    TANDEM_ASSIGN_OR_RETURN(P.up, Pack(L.up_proj));
    TANDEM_ASSIGN_OR_RETURN(P.down, Pack(L.down_proj));
    packed_.push_back(std::move(P));
    for (const WeightTensor* t :
         {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj}) {
      ReleaseMapped(*t);
    }
  }
  TANDEM_ASSIGN_OR_RETURN(lm_head_, Pack(weights_->lm_head));
  // Embedding rows come out of a packed matrix (PackedWeight::Row): the head itself when tied,
  // so the model keeps one copy, stored like every other matrix.
  const bool tied = weights_->lm_head.raw == weights_->embed.raw;
  if (!tied) {
    TANDEM_ASSIGN_OR_RETURN(embed_, Pack(weights_->embed));
    ReleaseMapped(weights_->lm_head);
  }
  ReleaseMapped(weights_->embed);
  return Status::Ok();
}

Status CpuRunner::Forward(const ForwardBatch& batch, KvCache& cache,
                          const LayerWrittenFn& on_layer_written) {
  const ModelConfig& c = config_;
  const KvGeometry& kv = cache.geometry();
  num_logit_rows_ = 0;
  if (kv.num_layers != c.num_layers || kv.num_kv_heads != c.num_kv_heads ||
      kv.head_dim != c.head_dim || kv.dtype != DType::kF32 ||
      cache.pool().memory() != PageMemory::kHost) {
    return FailedPreconditionError("KV cache ({} pages) does not match the model",
                                   cache.pool().kind());
  }
  TANDEM_RETURN_IF_ERROR(ValidateForwardBatch(batch, c, kv.page_size));
  // Flatten the batch into rows: decode rows, then prefill chunks.
  std::vector<int32_t> tokens, positions;
  std::vector<const int32_t*> tables;
  std::vector<int64_t> logit_rows;
  for (const auto* list : {&batch.decode, &batch.prefill}) {
    for (const ForwardChunk& ch : *list) {
      for (size_t t = 0; t < ch.tokens.size(); ++t) {
        tokens.push_back(ch.tokens[t]);
        positions.push_back(static_cast<int32_t>(ch.start_pos + t));
        tables.push_back(ch.block_table.data());
      }
      if (ch.want_logits) logit_rows.push_back(static_cast<int64_t>(tokens.size()) - 1);
    }
  }

  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = c.hidden_size, hd = c.head_dim, q_dim = int64_t{c.num_heads} * hd,
                kv_dim = int64_t{c.num_kv_heads} * hd, f = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const ModelWeights& w = *weights_;

  std::vector<float> x(n * h), normed(n * h), q(n * q_dim), k(n * kv_dim), v(n * kv_dim),
      attn(n * q_dim), proj(n * h), gate(n * f), up(n * f);
  const PackedWeight& embedding_rows = embedding();
  for (int64_t i = 0; i < n; ++i) embedding_rows.Row(tokens[i], x.data() + i * h);
  const cpu::RopeAngles angles = cpu::RopeTable(positions.data(), inv_freq_.data(), n, hd);
  for (int32_t li = 0; li < c.num_layers; ++li) {
    const LayerWeights& L = w.layers[li];
    const PackedLayer& P = packed_[li];
    cpu::RmsNorm(x.data(), L.input_norm.data, n, h, eps, normed.data());
    const kernels::cpu::GemmOutput qkv[] = {{&P.q, L.q_bias.data, q.data()},
                                            {&P.k, L.k_bias.data, k.data()},
                                            {&P.v, L.v_bias.data, v.data()}};
    kernels::cpu::GemmMany(normed.data(), n, qkv, cpu::NumThreads());
    cpu::Rope(q.data(), angles, n, c.num_heads, hd);
    cpu::Rope(k.data(), angles, n, c.num_kv_heads, hd);
    cpu::WriteKv(cache, li, k.data(), v.data(), positions.data(), tables.data(), n);
    if (on_layer_written) on_layer_written(li);
    cpu::PagedAttention(cache, li, q.data(), positions.data(), tables.data(), n, c.num_heads,
                        c.SlidingWindowForLayer(li), scale, attn.data());
    Linear(attn.data(), n, P.o, nullptr, proj.data());
    cpu::AddInPlace(x.data(), proj.data(), n * h);
    cpu::RmsNorm(x.data(), L.post_norm.data, n, h, eps, normed.data());
    const kernels::cpu::GemmOutput gate_up[] = {{&P.gate, nullptr, gate.data()},
                                                {&P.up, nullptr, up.data()}};
    kernels::cpu::GemmMany(normed.data(), n, gate_up, cpu::NumThreads());
    cpu::SwiGlu(gate.data(), up.data(), n, f, gate.data());
    Linear(gate.data(), n, P.down, nullptr, proj.data());
    cpu::AddInPlace(x.data(), proj.data(), n * h);
  }
  const int64_t nl = static_cast<int64_t>(logit_rows.size());
  if (static_cast<int64_t>(logits_.size()) < nl * c.vocab_size) logits_.resize(nl * c.vocab_size);
  num_logit_rows_ = nl;
  if (nl == 0) return Status::Ok();
  std::vector<float> last(nl * h);
  for (int64_t r = 0; r < nl; ++r) {
    std::copy(x.data() + logit_rows[r] * h, x.data() + (logit_rows[r] + 1) * h,
              last.data() + r * h);
  }
  cpu::RmsNorm(last.data(), w.final_norm.data, nl, h, eps, last.data());
  Linear(last.data(), nl, lm_head_, nullptr, logits_.data());
  return Status::Ok();
}

Status CpuRunner::Sample(std::span<const SampleRow> rows, std::vector<SampleResult>* out) {
  if (static_cast<int64_t>(rows.size()) > num_logit_rows_) {
    return InvalidArgumentError("{} rows to sample, the last forward produced {} logits rows",
                                rows.size(), num_logit_rows_);
  }
  out->resize(rows.size());
  const int64_t vocab = config_.vocab_size;
  const std::span<const float> all(logits_);
#pragma omp parallel for num_threads(cpu::NumThreads()) schedule(dynamic, 1)
  for (size_t r = 0; r < rows.size(); ++r) {
    const SampleRow& row = rows[r];
    (*out)[r] = tandem::Sample(all.subspan(r * vocab, vocab), *row.params, row.prompt,
                               row.generated, row.position);
  }
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<ModelRunner>> CreateCpuRunner(const ModelConfig& config,
                                                       std::unique_ptr<ModelWeights> weights,
                                                       const CpuRunnerOptions& options) {
  if (options.num_threads > 0) cpu::SetNumThreads(options.num_threads);
  auto runner = std::make_unique<CpuRunner>(config, std::move(weights), options.weights);
  TANDEM_RETURN_IF_ERROR(runner->Init());
  return std::unique_ptr<ModelRunner>(std::move(runner));
}

}  // namespace tandem
