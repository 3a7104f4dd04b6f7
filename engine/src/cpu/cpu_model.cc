#include <sys/mman.h>
#include <unistd.h>

#include <cmath>

#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/model.h"

namespace tandem {

namespace {

kernels::cpu::PackedWeight Pack(const WeightTensor& t, kernels::cpu::WeightStorage storage) {
  return kernels::cpu::PackedWeight::Pack(t.data, t.shape[0], t.shape[1], storage);
}

// out[n, m] = x[n, k] · wᵀ (+ bias), batch-invariant (see kernels/cpu/gemm.h).
void Linear(const float* x, int64_t n, const kernels::cpu::PackedWeight& w, const float* bias,
            float* out) {
  kernels::cpu::Gemm(x, n, w, bias, out, cpu::NumThreads());
}

// The packed copy replaces a matrix viewed in place in the checkpoint mapping: hand those pages
// back (reading them again would fault them in from the file, so this is always safe).
void ReleaseMapped(const WeightTensor& t) {
  if (t.data == nullptr || !t.owned.empty()) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data) + page - 1) & ~(page - 1);
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(t.data + t.shape[0] * t.shape[1])) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

CpuModel::CpuModel(const ModelConfig& config, std::shared_ptr<const ModelWeights> weights,
                   kernels::cpu::WeightStorage storage)
    : config_(config),
      weights_(std::move(weights)),
      inv_freq_(cpu::RopeInvFreq(config)),
      storage_(storage) {
  for (const LayerWeights& L : weights_->layers) {
    packed_.push_back({Pack(L.q_proj, storage), Pack(L.k_proj, storage), Pack(L.v_proj, storage),
                       Pack(L.o_proj, storage), Pack(L.gate_proj, storage),
                       Pack(L.up_proj, storage), Pack(L.down_proj, storage)});
  }
  lm_head_ = Pack(weights_->lm_head, storage);
  for (const LayerWeights& L : weights_->layers) {
    for (const WeightTensor* t :
         {&L.q_proj, &L.k_proj, &L.v_proj, &L.o_proj, &L.gate_proj, &L.up_proj, &L.down_proj}) {
      ReleaseMapped(*t);
    }
  }
  // A tied head is the embedding, which lookups still read.
  if (weights_->lm_head.data != weights_->embed.data) ReleaseMapped(weights_->lm_head);
}

KvLayout CpuModel::MakeKvLayout(int32_t page_size) const {
  KvLayout l;
  l.num_layers = config_.num_layers;
  l.num_kv_heads = config_.num_kv_heads;
  l.head_dim = config_.head_dim;
  l.page_size = page_size;
  return l;
}

Status CpuModel::Forward(std::span<const ForwardChunk> chunks, KvCache& cache,
                         std::vector<float>* logits,
                         const std::function<void(int32_t layer)>& on_layer_done) {
  const ModelConfig& c = config_;
  const KvLayout& kv = cache.layout();
  if (kv.num_layers != c.num_layers || kv.num_kv_heads != c.num_kv_heads ||
      kv.head_dim != c.head_dim) {
    return FailedPreconditionError("KV cache layout does not match the model");
  }
  // Flatten the chunks into rows.
  std::vector<int32_t> tokens, positions;
  std::vector<const int32_t*> tables;
  std::vector<int64_t> logit_rows;
  for (const ForwardChunk& ch : chunks) {
    if (ch.tokens.empty()) return InvalidArgumentError("forward chunk has no tokens");
    const int64_t end = ch.start_pos + static_cast<int64_t>(ch.tokens.size());
    if (static_cast<int64_t>(ch.block_table.size()) * kv.page_size < end) {
      return InvalidArgumentError("block table of {} blocks cannot hold position {}",
                                  ch.block_table.size(), end - 1);
    }
    if (end > c.max_position_embeddings && c.max_position_embeddings > 0) {
      return InvalidArgumentError("position {} exceeds max_position_embeddings {}", end - 1,
                                  c.max_position_embeddings);
    }
    for (size_t t = 0; t < ch.tokens.size(); ++t) {
      if (ch.tokens[t] < 0 || ch.tokens[t] >= c.vocab_size) {
        return InvalidArgumentError("token id {} is outside the vocabulary [0, {})", ch.tokens[t],
                                    c.vocab_size);
      }
      tokens.push_back(ch.tokens[t]);
      positions.push_back(static_cast<int32_t>(ch.start_pos + t));
      tables.push_back(ch.block_table.data());
    }
    if (ch.want_logits) logit_rows.push_back(static_cast<int64_t>(tokens.size()) - 1);
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t h = c.hidden_size, hd = c.head_dim, q_dim = int64_t{c.num_heads} * hd,
                kv_dim = int64_t{c.num_kv_heads} * hd, f = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const ModelWeights& w = *weights_;

  std::vector<float> x(n * h), normed(n * h), q(n * q_dim), k(n * kv_dim), v(n * kv_dim),
      attn(n * q_dim), proj(n * h), gate(n * f), up(n * f);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = w.embed.data + int64_t{tokens[i]} * h;
    float* xi = x.data() + i * h;
    std::copy(row, row + h, xi);
    // bf16 storage covers every matrix, the embedding table included (tied to the head or not).
    if (storage_ == kernels::cpu::WeightStorage::kBF16) kernels::cpu::RoundToBf16InPlace(xi, h);
  }
  for (int32_t li = 0; li < c.num_layers; ++li) {
    const LayerWeights& L = w.layers[li];
    const PackedLayer& P = packed_[li];
    cpu::RmsNorm(x.data(), L.input_norm.data, n, h, eps, normed.data());
    Linear(normed.data(), n, P.q, L.q_bias.data, q.data());
    Linear(normed.data(), n, P.k, L.k_bias.data, k.data());
    Linear(normed.data(), n, P.v, L.v_bias.data, v.data());
    cpu::Rope(q.data(), positions.data(), inv_freq_.data(), n, c.num_heads, hd);
    cpu::Rope(k.data(), positions.data(), inv_freq_.data(), n, c.num_kv_heads, hd);
    cpu::WriteKv(cache, li, k.data(), v.data(), positions.data(), tables.data(), n);
    if (on_layer_done) on_layer_done(li);
    cpu::PagedAttention(cache, li, q.data(), positions.data(), tables.data(), n, c.num_heads,
                        c.SlidingWindowForLayer(li), scale, attn.data());
    Linear(attn.data(), n, P.o, nullptr, proj.data());
    cpu::AddInPlace(x.data(), proj.data(), n * h);
    cpu::RmsNorm(x.data(), L.post_norm.data, n, h, eps, normed.data());
    Linear(normed.data(), n, P.gate, nullptr, gate.data());
    Linear(normed.data(), n, P.up, nullptr, up.data());
    cpu::SwiGlu(gate.data(), up.data(), n, f, gate.data());
    Linear(gate.data(), n, P.down, nullptr, proj.data());
    cpu::AddInPlace(x.data(), proj.data(), n * h);
  }
  const int64_t nl = static_cast<int64_t>(logit_rows.size());
  logits->resize(nl * c.vocab_size);
  if (nl == 0) return Status::Ok();
  std::vector<float> last(nl * h);
  for (int64_t r = 0; r < nl; ++r) {
    std::copy(x.data() + logit_rows[r] * h, x.data() + (logit_rows[r] + 1) * h,
              last.data() + r * h);
  }
  cpu::RmsNorm(last.data(), w.final_norm.data, nl, h, eps, last.data());
  Linear(last.data(), nl, lm_head_, nullptr, logits->data());
  return Status::Ok();
}

}  // namespace tandem
