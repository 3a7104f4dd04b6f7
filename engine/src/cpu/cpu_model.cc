#include <cmath>

#include "tandem/engine/cpu_ops.h"
#include "tandem/engine/model.h"

namespace tandem {

CpuModel::CpuModel(const ModelConfig& config, std::shared_ptr<const ModelWeights> weights)
    : config_(config), weights_(std::move(weights)), inv_freq_(cpu::RopeInvFreq(config)) {}

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
    std::copy(row, row + h, x.data() + i * h);
  }
  for (int32_t li = 0; li < c.num_layers; ++li) {
    const LayerWeights& L = w.layers[li];
    cpu::RmsNorm(x.data(), L.input_norm.data, n, h, eps, normed.data());
    cpu::Matmul(normed.data(), L.q_proj.data, L.q_bias.data, n, h, q_dim, q.data());
    cpu::Matmul(normed.data(), L.k_proj.data, L.k_bias.data, n, h, kv_dim, k.data());
    cpu::Matmul(normed.data(), L.v_proj.data, L.v_bias.data, n, h, kv_dim, v.data());
    cpu::Rope(q.data(), positions.data(), inv_freq_.data(), n, c.num_heads, hd);
    cpu::Rope(k.data(), positions.data(), inv_freq_.data(), n, c.num_kv_heads, hd);
    cpu::WriteKv(cache, li, k.data(), v.data(), positions.data(), tables.data(), n);
    if (on_layer_done) on_layer_done(li);
    cpu::PagedAttention(cache, li, q.data(), positions.data(), tables.data(), n, c.num_heads,
                        c.SlidingWindowForLayer(li), scale, attn.data());
    cpu::Matmul(attn.data(), L.o_proj.data, nullptr, n, q_dim, h, proj.data());
    cpu::AddInPlace(x.data(), proj.data(), n * h);
    cpu::RmsNorm(x.data(), L.post_norm.data, n, h, eps, normed.data());
    cpu::Matmul(normed.data(), L.gate_proj.data, nullptr, n, h, f, gate.data());
    cpu::Matmul(normed.data(), L.up_proj.data, nullptr, n, h, f, up.data());
    cpu::SwiGlu(gate.data(), up.data(), n, f, gate.data());
    cpu::Matmul(gate.data(), L.down_proj.data, nullptr, n, f, h, proj.data());
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
  cpu::Matmul(last.data(), w.lm_head.data, nullptr, nl, h, c.vocab_size, logits->data());
  return Status::Ok();
}

}  // namespace tandem
