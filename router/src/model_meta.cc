#include "tandem/router/model_meta.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "tandem/engine/gguf.h"

namespace tandem {
namespace {

using json = nlohmann::json;

StatusOr<json> ReadJson(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return NotFoundError("{}: cannot open", file.string());
  json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgumentError("{}: not a JSON object", file.string());
  }
  return j;
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

// The same fields from a GGUF file's metadata (the values tools/gguf_to_hf.py writes into
// config.json and generation_config.json).
StatusOr<ModelMeta> LoadGgufModelMeta(const std::filesystem::path& file, ModelMeta meta) {
  TANDEM_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> g, GgufFile::Open(file));
  TANDEM_ASSIGN_OR_RETURN(std::string arch, g->GetString("general.architecture"));
  meta.architecture = arch == "llama" ? "LlamaForCausalLM" : arch;
  TANDEM_ASSIGN_OR_RETURN(int64_t ctx, g->GetInt(arch + ".context_length"));
  if (ctx <= 0) {
    return InvalidArgumentError("{}: {}.context_length must be positive", g->path(), arch);
  }
  meta.max_context_tokens = ctx;
  const GgufValue* tokens = g->Find("tokenizer.ggml.tokens");
  const int64_t n_tokens = tokens != nullptr && tokens->type == GgufValueType::kArray
                               ? static_cast<int64_t>(tokens->elements.size())
                               : 0;
  TANDEM_ASSIGN_OR_RETURN(int64_t vocab, g->GetInt(arch + ".vocab_size", n_tokens));
  if (vocab <= 0) {
    return InvalidArgumentError("{}: no {}.vocab_size and no tokenizer.ggml.tokens", g->path(),
                                arch);
  }
  meta.vocab_size = static_cast<int32_t>(vocab);
  if (const GgufValue* e = g->Find("tokenizer.ggml.eos_token_id")) {
    if (auto v = e->AsInt()) meta.eos_token_ids = {static_cast<int32_t>(*v)};
  }
  return meta;
}

}  // namespace

StatusOr<ModelMeta> LoadModelMeta(const std::filesystem::path& dir) {
  if (IsGgufPath(dir)) {
    ModelMeta meta;
    // The file name, as workers announce it (prefill/decode: model_dir.filename()).
    meta.name = std::filesystem::absolute(dir).lexically_normal().filename().string();
    return LoadGgufModelMeta(dir, std::move(meta));
  }
  const std::filesystem::path config_file = dir / "config.json";
  TANDEM_ASSIGN_OR_RETURN(json config, ReadJson(config_file));
  ModelMeta meta;
  meta.name = std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (meta.name.empty()) meta.name = std::filesystem::absolute(dir).parent_path().filename();
  if (auto a = config.find("architectures");
      a != config.end() && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    meta.architecture = (*a)[0].get<std::string>();
  }
  auto mp = config.find("max_position_embeddings");
  if (mp == config.end() || !mp->is_number_integer() || mp->get<int64_t>() <= 0) {
    return InvalidArgumentError("{}: \"max_position_embeddings\" must be a positive integer",
                                config_file.string());
  }
  meta.max_context_tokens = mp->get<int64_t>();
  auto vs = config.find("vocab_size");
  if (vs == config.end() || !vs->is_number_integer() || vs->get<int64_t>() <= 0) {
    return InvalidArgumentError("{}: \"vocab_size\" must be a positive integer",
                                config_file.string());
  }
  meta.vocab_size = vs->get<int32_t>();
  if (auto e = config.find("eos_token_id"); e != config.end()) meta.eos_token_ids = ReadIdList(*e);
  const std::filesystem::path gen_file = dir / "generation_config.json";
  if (std::filesystem::exists(gen_file)) {
    TANDEM_ASSIGN_OR_RETURN(json gen, ReadJson(gen_file));
    if (auto e = gen.find("eos_token_id"); e != gen.end() && !e->is_null()) {
      meta.eos_token_ids = ReadIdList(*e);
    }
  }
  return meta;
}

}  // namespace tandem
