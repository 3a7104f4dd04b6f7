#include "tandem/engine/weights.h"

#include <cstdint>

#include <fmt/format.h>

namespace tandem {
namespace {

Status Take(const Checkpoint& ckpt, const std::string& name, std::vector<int64_t> shape,
            WeightTensor* out) {
  TANDEM_ASSIGN_OR_RETURN(const TensorView* t, ckpt.Get(name, shape));
  out->shape = t->shape;
  out->raw = t->data;
  out->dtype = t->dtype;
  if (t->dtype == DType::kF32 && reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0) {
    out->data = static_cast<const float*>(t->data);
    return Status::Ok();
  }
  if (shape.size() == 2) return Status::Ok();  // matrices: the backend converts from `raw`
  out->owned.resize(t->NumElements());
  Checkpoint::ToFloat32(*t, out->owned.data());
  out->data = out->owned.data();
  return Status::Ok();
}

}  // namespace

StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Load(const std::filesystem::path& dir,
                                                           const ModelConfig& c) {
  auto w = std::make_unique<ModelWeights>();
  TANDEM_ASSIGN_OR_RETURN(w->checkpoint, Checkpoint::Open(dir));
  const Checkpoint& ck = *w->checkpoint;
  const int64_t h = c.hidden_size, q = int64_t{c.num_heads} * c.head_dim,
                kv = int64_t{c.num_kv_heads} * c.head_dim, f = c.intermediate_size,
                v = c.vocab_size;
  TANDEM_RETURN_IF_ERROR(Take(ck, "model.embed_tokens.weight", {v, h}, &w->embed));
  TANDEM_RETURN_IF_ERROR(Take(ck, "model.norm.weight", {h}, &w->final_norm));
  if (c.tie_word_embeddings && !ck.Has("lm_head.weight")) {
    w->lm_head.raw = w->embed.raw;
    w->lm_head.dtype = w->embed.dtype;
    w->lm_head.data = w->embed.data;
    w->lm_head.shape = w->embed.shape;
  } else {
    TANDEM_RETURN_IF_ERROR(Take(ck, "lm_head.weight", {v, h}, &w->lm_head));
  }
  w->layers.resize(c.num_layers);
  for (int32_t i = 0; i < c.num_layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = fmt::format("model.layers.{}.", i);
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "input_layernorm.weight", {h}, &l.input_norm));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.q_proj.weight", {q, h}, &l.q_proj));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.k_proj.weight", {kv, h}, &l.k_proj));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.v_proj.weight", {kv, h}, &l.v_proj));
    if (c.qkv_bias) {
      TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.q_proj.bias", {q}, &l.q_bias));
      TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.k_proj.bias", {kv}, &l.k_bias));
      TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.v_proj.bias", {kv}, &l.v_bias));
    }
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "self_attn.o_proj.weight", {h, q}, &l.o_proj));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "post_attention_layernorm.weight", {h}, &l.post_norm));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "mlp.gate_proj.weight", {f, h}, &l.gate_proj));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "mlp.up_proj.weight", {f, h}, &l.up_proj));
    TANDEM_RETURN_IF_ERROR(Take(ck, p + "mlp.down_proj.weight", {h, f}, &l.down_proj));
  }
  return w;
}

}  // namespace tandem
