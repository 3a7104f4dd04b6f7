#include "tandem/engine/model_config.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "model/gguf_config.h"

namespace tandem {
namespace {

using nlohmann::json;

StatusOr<json> ReadJson(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return NotFoundError("{}: cannot open", file.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    return InvalidArgumentError("{}: not valid JSON: {}", file.string(), e.what());
  }
}

// Reads an integer key; `required` keys that are missing are an error naming file and key.
Status GetInt(const json& j, const std::filesystem::path& file, const char* key, bool required,
              int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgumentError("{}: missing key \"{}\"", file.string(), key);
    return Status::Ok();
  }
  if (!it->is_number_integer()) {
    return InvalidArgumentError("{}: \"{}\" must be an integer", file.string(), key);
  }
  *out = it->get<int64_t>();
  return Status::Ok();
}

Status GetDouble(const json& j, const std::filesystem::path& file, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number())
    return InvalidArgumentError("{}: \"{}\" must be a number", file.string(), key);
  *out = it->get<double>();
  return Status::Ok();
}

// eos_token_id may be an int or a list of ints.
std::vector<int32_t> ReadIdList(const json& v) {
  std::vector<int32_t> ids;
  if (v.is_number_integer()) ids.push_back(v.get<int32_t>());
  if (v.is_array()) {
    for (const auto& e : v) {
      if (e.is_number_integer()) ids.push_back(e.get<int32_t>());
    }
  }
  return ids;
}

}  // namespace

std::string_view ArchitectureName(Architecture a) {
  switch (a) {
    case Architecture::kLlama:
      return "LlamaForCausalLM";
    case Architecture::kMistral:
      return "MistralForCausalLM";
    case Architecture::kQwen2:
      return "Qwen2ForCausalLM";
  }
  return "?";
}

StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  if (IsGgufPath(dir)) {
    TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> gguf, GgufFile::Open(dir));
    return ModelConfigFromGguf(*gguf);
  }
  const auto file = dir / "config.json";
  TANDEM_ASSIGN_OR_RETURN(json j, ReadJson(file));
  if (!j.is_object()) return InvalidArgumentError("{}: expected a JSON object", file.string());
  ModelConfig c;

  auto archs = j.find("architectures");
  if (archs == j.end() || !archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
    return InvalidArgumentError("{}: missing \"architectures\"", file.string());
  }
  c.arch_name = (*archs)[0].get<std::string>();
  if (c.arch_name == "LlamaForCausalLM") {
    c.arch = Architecture::kLlama;
  } else if (c.arch_name == "MistralForCausalLM") {
    c.arch = Architecture::kMistral;
  } else if (c.arch_name == "Qwen2ForCausalLM") {
    c.arch = Architecture::kQwen2;
  } else {
    return InvalidArgumentError(
        "{}: unknown architecture \"{}\" (supported: LlamaForCausalLM, MistralForCausalLM, "
        "Qwen2ForCausalLM)",
        file.string(), c.arch_name);
  }

  int64_t hidden = 0, inter = 0, layers = 0, heads = 0, kv_heads = -1, head_dim = -1, vocab = 0;
  int64_t max_pos = 2048;
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "hidden_size", true, &hidden));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "intermediate_size", true, &inter));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "num_hidden_layers", true, &layers));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "num_attention_heads", true, &heads));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "num_key_value_heads", false, &kv_heads));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "head_dim", false, &head_dim));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "vocab_size", true, &vocab));
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "max_position_embeddings", false, &max_pos));
  if (kv_heads < 0) kv_heads = heads;
  if (hidden <= 0 || inter <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || vocab <= 0) {
    return InvalidArgumentError("{}: sizes must be positive", file.string());
  }
  if (heads % kv_heads != 0) {
    return InvalidArgumentError(
        "{}: num_attention_heads ({}) is not a multiple of "
        "num_key_value_heads ({})",
        file.string(), heads, kv_heads);
  }
  if (head_dim < 0) {
    if (hidden % heads != 0) {
      return InvalidArgumentError(
          "{}: hidden_size ({}) is not a multiple of "
          "num_attention_heads ({})",
          file.string(), hidden, heads);
    }
    head_dim = hidden / heads;
  }
  if (head_dim % 2 != 0) {
    return InvalidArgumentError("{}: head_dim must be even for RoPE, got {}", file.string(),
                                head_dim);
  }
  c.hidden_size = static_cast<int32_t>(hidden);
  c.intermediate_size = static_cast<int32_t>(inter);
  c.num_layers = static_cast<int32_t>(layers);
  c.num_heads = static_cast<int32_t>(heads);
  c.num_kv_heads = static_cast<int32_t>(kv_heads);
  c.head_dim = static_cast<int32_t>(head_dim);
  c.vocab_size = static_cast<int32_t>(vocab);
  c.max_position_embeddings = max_pos;

  c.rms_norm_eps = 1e-6;
  TANDEM_RETURN_IF_ERROR(GetDouble(j, file, "rms_norm_eps", &c.rms_norm_eps));
  TANDEM_RETURN_IF_ERROR(GetDouble(j, file, "rope_theta", &c.rope_theta));
  // Llama, Mistral and Qwen2 configs all default to untied embeddings.
  c.tie_word_embeddings = j.value("tie_word_embeddings", false);
  c.qkv_bias = c.arch == Architecture::kQwen2 || j.value("attention_bias", false);
  if (j.value("mlp_bias", false)) {
    return InvalidArgumentError("{}: \"mlp_bias\": true is not supported", file.string());
  }
  if (auto act = j.find("hidden_act"); act != j.end() && act->is_string() && *act != "silu") {
    return InvalidArgumentError("{}: hidden_act \"{}\" is not supported (only \"silu\")",
                                file.string(), act->get<std::string>());
  }

  // Sliding window: Mistral on every layer; Qwen2 only with use_sliding_window, from
  // max_window_layers on. Llama has none.
  int64_t window = 0;
  TANDEM_RETURN_IF_ERROR(GetInt(j, file, "sliding_window", false, &window));
  if (c.arch == Architecture::kMistral) {
    c.sliding_window = static_cast<int32_t>(window);
  } else if (c.arch == Architecture::kQwen2 && j.value("use_sliding_window", false)) {
    int64_t max_window_layers = 0;
    TANDEM_RETURN_IF_ERROR(GetInt(j, file, "max_window_layers", false, &max_window_layers));
    c.sliding_window = static_cast<int32_t>(window);
    c.first_sliding_layer = static_cast<int32_t>(max_window_layers);
  }
  if (c.sliding_window < 0) {
    return InvalidArgumentError("{}: sliding_window must be >= 0", file.string());
  }

  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    std::string type = rs->value("rope_type", rs->value("type", std::string()));
    if (type == "linear") {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
    } else if (type == "llama3") {
      c.rope_scaling.type = RopeScaling::Type::kLlama3;
      TANDEM_RETURN_IF_ERROR(
          GetDouble(*rs, file, "low_freq_factor", &c.rope_scaling.low_freq_factor));
      TANDEM_RETURN_IF_ERROR(
          GetDouble(*rs, file, "high_freq_factor", &c.rope_scaling.high_freq_factor));
      TANDEM_RETURN_IF_ERROR(GetInt(*rs, file, "original_max_position_embeddings", false,
                                    &c.rope_scaling.original_max_position_embeddings));
    } else if (type == "default") {
      c.rope_scaling.type = RopeScaling::Type::kNone;
    } else {
      return InvalidArgumentError("{}: rope_scaling type \"{}\" is not supported (linear, llama3)",
                                  file.string(), type);
    }
    TANDEM_RETURN_IF_ERROR(GetDouble(*rs, file, "factor", &c.rope_scaling.factor));
    if (c.rope_scaling.factor <= 0) {
      return InvalidArgumentError("{}: rope_scaling.factor must be > 0", file.string());
    }
  }

  std::string dtype = j.value("torch_dtype", std::string("float32"));
  if (dtype == "float32") {
    c.dtype = DType::kF32;
  } else if (dtype == "float16") {
    c.dtype = DType::kF16;
  } else if (dtype == "bfloat16") {
    c.dtype = DType::kBF16;
  } else {
    return InvalidArgumentError(
        "{}: torch_dtype \"{}\" is not supported (float32, float16, "
        "bfloat16)",
        file.string(), dtype);
  }

  if (auto b = j.find("bos_token_id"); b != j.end() && b->is_number_integer()) {
    c.bos_token_id = b->get<int32_t>();
  }
  if (auto e = j.find("eos_token_id"); e != j.end()) c.eos_token_ids = ReadIdList(*e);

  const auto gen_file = dir / "generation_config.json";
  if (std::filesystem::exists(gen_file)) {
    TANDEM_ASSIGN_OR_RETURN(json g, ReadJson(gen_file));
    if (auto e = g.find("eos_token_id"); e != g.end() && !e->is_null()) {
      c.eos_token_ids = ReadIdList(*e);
    }
    if (auto b = g.find("bos_token_id"); b != g.end() && b->is_number_integer()) {
      c.bos_token_id = b->get<int32_t>();
    }
  }
  return c;
}

}  // namespace tandem
