// Checkpoint::OpenGguf: a GGUF file's tensors under Hugging Face names, shapes and row order.
#include <cstring>
#include <map>
#include <string_view>

#include <fmt/format.h>

#include "tandem/engine/checkpoint.h"
#include "tandem/engine/gguf.h"

namespace tandem {
namespace {

// GGUF block tensor kinds (blk.N.<kind>.<suffix>) -> Hugging Face module paths.
const std::map<std::string_view, std::string_view>& BlockRenames() {
  static const auto* m = new std::map<std::string_view, std::string_view>{
      {"attn_q", "self_attn.q_proj"},
      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
      {"attn_norm", "input_layernorm"},
      {"ffn_norm", "post_attention_layernorm"},
  };
  return *m;
}

// The Hugging Face name of GGUF tensor `name`, and in `kind` the block kind ("attn_q", …; empty
// outside blocks). Unknown names map to themselves.
std::string HfName(const std::string& name, std::string* kind) {
  kind->clear();
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (name.rfind("blk.", 0) != 0) return name;
  // blk.<layer>.<kind>.<suffix>
  const size_t a = 4, b = name.find('.', a);
  if (b == std::string::npos) return name;
  const size_t c = name.find('.', b + 1);
  if (c == std::string::npos) return name;
  const std::string layer = name.substr(a, b - a);
  if (layer.empty() || layer.find_first_not_of("0123456789") != std::string::npos) return name;
  const std::string k = name.substr(b + 1, c - b - 1);
  auto it = BlockRenames().find(k);
  if (it == BlockRenames().end()) return name;
  *kind = k;
  return fmt::format("model.layers.{}.{}.{}", std::stoll(layer), it->second, name.substr(c + 1));
}

// Rows of `src` reordered from llama.cpp's rope layout back to Hugging Face's: within each head of
// `head_dim` rows, HF row j * head_dim/2 + i is GGUF row 2i + j (the inverse of
// convert_hf_to_gguf.py's permute, as tools/gguf_to_hf.py's unpermute).
std::vector<uint8_t> UnpermuteRows(const uint8_t* src, int64_t rows, size_t row_bytes,
                                   int64_t n_head) {
  std::vector<uint8_t> out(static_cast<size_t>(rows) * row_bytes);
  const int64_t head_dim = rows / n_head, half = head_dim / 2;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t i = 0; i < half; ++i) {
        const int64_t hf_row = h * head_dim + j * half + i;
        const int64_t gguf_row = h * head_dim + 2 * i + j;
        std::memcpy(out.data() + hf_row * row_bytes, src + gguf_row * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

}  // namespace

StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenGguf(const std::filesystem::path& file) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(file));
  const std::string& fname = gguf->path();
  TANDEM_ASSIGN_OR_RETURN(std::string arch, gguf->GetString("general.architecture"));
  if (arch != "llama") {
    return InvalidArgumentError(
        "{}: general.architecture \"{}\" is not supported (GGUF files of the llama architecture "
        "only)",
        fname, arch);
  }
  TANDEM_ASSIGN_OR_RETURN(int64_t n_head, gguf->GetInt("llama.attention.head_count"));
  TANDEM_ASSIGN_OR_RETURN(int64_t n_kv_head, gguf->GetInt("llama.attention.head_count_kv", n_head));
  if (n_head <= 0 || n_kv_head <= 0) {
    return InvalidArgumentError("{}: llama.attention.head_count and head_count_kv must be > 0",
                                fname);
  }

  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->dir_ = file;
  for (const GgufTensorInfo& info : gguf->tensors()) {
    if (!info.dtype.has_value()) {
      return InvalidArgumentError(
          "{}: tensor \"{}\" has ggml type {}, which Tandem does not read (F32, F16, BF16, Q8_0, "
          "Q4_0, Q4_1)",
          fname, info.name, GgmlTypeName(info.ggml_type));
    }
    std::string kind;
    TensorView t;
    t.name = HfName(info.name, &kind);
    t.dtype = *info.dtype;
    t.shape.assign(info.ne.rbegin(), info.ne.rend());
    t.data = info.data;
    t.num_bytes = info.num_bytes;
    t.file = fname;
    if (kind == "attn_q" || kind == "attn_k") {
      const int64_t heads = kind == "attn_q" ? n_head : n_kv_head;
      if (info.ne.size() != 2 || info.ne[1] % (2 * heads) != 0) {
        return InvalidArgumentError(
            "{}: tensor \"{}\" has shape {}, not [heads ({}) * even head_dim, in]", fname,
            info.name, ShapeString(t.shape), heads);
      }
      const size_t row_bytes = DTypeBytes(t.dtype, info.ne[0]);
      ckpt->owned_data_.push_back(UnpermuteRows(info.data, info.ne[1], row_bytes, heads));
      t.data = ckpt->owned_data_.back().data();
    }
    if (!ckpt->tensors_.emplace(t.name, t).second) {
      return InvalidArgumentError("{}: tensors map to the same name \"{}\"", fname, t.name);
    }
  }
  ckpt->gguf_ = std::move(gguf);
  return ckpt;
}

}  // namespace tandem
