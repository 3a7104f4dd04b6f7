#include "tandem/router/model_meta.h"

#include <fstream>

#include <nlohmann/json.hpp>

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

}  // namespace

StatusOr<ModelMeta> LoadModelMeta(const std::filesystem::path& dir) {
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
