#include "model/gguf_config.h"

#include <charconv>
#include <cstdlib>
#include <map>

namespace tandem {
namespace {

// The double that the shortest decimal of the float32 `x` reads as: what tools/gguf_to_hf.py
// writes into config.json for GGUF's float32 values (1e-05, not 9.99999974737875e-06).
double F32Shortest(double x) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf) - 1, static_cast<float>(x));
  *r.ptr = '\0';
  return std::strtod(buf, nullptr);
}

}  // namespace

StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& g) {
  const std::string& file = g.path();
  TANDEM_ASSIGN_OR_RETURN(std::string arch, g.GetString("general.architecture"));
  if (arch != "llama") {
    return InvalidArgumentError(
        "{}: general.architecture \"{}\" is not supported (GGUF files of the llama architecture "
        "only)",
        file, arch);
  }
  auto key = [&](const char* k) { return arch + "." + k; };
  ModelConfig c;
  c.arch = Architecture::kLlama;
  c.arch_name = "LlamaForCausalLM";
  TANDEM_ASSIGN_OR_RETURN(int64_t hidden, g.GetInt(key("embedding_length")));
  TANDEM_ASSIGN_OR_RETURN(int64_t inter, g.GetInt(key("feed_forward_length")));
  TANDEM_ASSIGN_OR_RETURN(int64_t layers, g.GetInt(key("block_count")));
  TANDEM_ASSIGN_OR_RETURN(int64_t heads, g.GetInt(key("attention.head_count")));
  TANDEM_ASSIGN_OR_RETURN(int64_t kv_heads, g.GetInt(key("attention.head_count_kv"), heads));
  TANDEM_ASSIGN_OR_RETURN(int64_t ctx, g.GetInt(key("context_length")));
  if (hidden <= 0 || inter <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || ctx <= 0) {
    return InvalidArgumentError(
        "{}: {}.embedding_length, feed_forward_length, block_count, attention.head_count(_kv) "
        "and context_length must be positive",
        file, arch);
  }
  if (heads % kv_heads != 0) {
    return InvalidArgumentError("{}: {} ({}) is not a multiple of {} ({})", file,
                                key("attention.head_count"), heads, key("attention.head_count_kv"),
                                kv_heads);
  }
  const int64_t default_head_dim = hidden % heads == 0 ? hidden / heads : 0;
  TANDEM_ASSIGN_OR_RETURN(int64_t head_dim,
                          g.GetInt(key("attention.key_length"), default_head_dim));
  TANDEM_ASSIGN_OR_RETURN(int64_t rope_dim, g.GetInt(key("rope.dimension_count"), head_dim));
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return InvalidArgumentError("{}: head_dim must be positive and even for RoPE, got {}", file,
                                head_dim);
  }
  if (rope_dim != head_dim) {
    return InvalidArgumentError(
        "{}: {} ({}) differs from the head dimension ({}): partial rotary embeddings are not "
        "supported",
        file, key("rope.dimension_count"), rope_dim, head_dim);
  }
  const GgufValue* tokens = g.Find("tokenizer.ggml.tokens");
  const int64_t n_tokens = tokens != nullptr && tokens->type == GgufValueType::kArray
                               ? static_cast<int64_t>(tokens->elements.size())
                               : 0;
  TANDEM_ASSIGN_OR_RETURN(int64_t vocab, g.GetInt(key("vocab_size"), n_tokens));
  if (vocab <= 0) {
    return InvalidArgumentError(
        "{}: no {} and no tokenizer.ggml.tokens to take the vocabulary "
        "size from",
        file, key("vocab_size"));
  }
  c.hidden_size = static_cast<int32_t>(hidden);
  c.intermediate_size = static_cast<int32_t>(inter);
  c.num_layers = static_cast<int32_t>(layers);
  c.num_heads = static_cast<int32_t>(heads);
  c.num_kv_heads = static_cast<int32_t>(kv_heads);
  c.head_dim = static_cast<int32_t>(head_dim);
  c.vocab_size = static_cast<int32_t>(vocab);
  c.max_position_embeddings = ctx;

  TANDEM_ASSIGN_OR_RETURN(double eps, g.GetFloat(key("attention.layer_norm_rms_epsilon")));
  c.rms_norm_eps = F32Shortest(eps);
  TANDEM_ASSIGN_OR_RETURN(double theta, g.GetFloat(key("rope.freq_base"), 10000.0));
  c.rope_theta = F32Shortest(theta);

  TANDEM_ASSIGN_OR_RETURN(std::string scaling, g.GetString(key("rope.scaling.type"), "none"));
  if (scaling == "linear") {
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    TANDEM_ASSIGN_OR_RETURN(double factor, g.GetFloat(key("rope.scaling.factor")));
    if (factor <= 0) {
      return InvalidArgumentError("{}: {} must be > 0", file, key("rope.scaling.factor"));
    }
    c.rope_scaling.factor = F32Shortest(factor);
  } else if (scaling != "none") {
    return InvalidArgumentError("{}: {} \"{}\" is not supported (none, linear)", file,
                                key("rope.scaling.type"), scaling);
  }
  if (g.FindTensor("rope_freqs.weight") != nullptr) {
    // Llama-3.1-style frequency factors: config.json would carry rope_scaling {"rope_type":
    // "llama3", …}, which the tensor alone does not state.
    return InvalidArgumentError(
        "{}: tensor \"rope_freqs.weight\" (llama3 rope scaling factors) is not supported; convert "
        "the model to a checkpoint folder with rope_scaling in config.json",
        file);
  }

  c.tie_word_embeddings = g.FindTensor("output.weight") == nullptr;
  // The dtype of most matrices (a Q4_1 file keeps a few F32 norms and maybe a Q8_0 embedding).
  std::map<DType, int> counts;
  for (const GgufTensorInfo& t : g.tensors()) {
    if (t.ne.size() >= 2 && t.dtype.has_value()) ++counts[*t.dtype];
  }
  int best = 0;
  for (const auto& [dtype, n] : counts) {
    if (n > best) {
      best = n;
      c.dtype = dtype;
    }
  }
  if (const GgufValue* b = g.Find("tokenizer.ggml.bos_token_id")) {
    if (auto v = b->AsInt()) c.bos_token_id = static_cast<int32_t>(*v);
  }
  if (const GgufValue* e = g.Find("tokenizer.ggml.eos_token_id")) {
    if (auto v = e->AsInt()) c.eos_token_ids = {static_cast<int32_t>(*v)};
  }
  return c;
}

}  // namespace tandem
