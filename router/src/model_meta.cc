#include "tandem/router/model_meta.h"

#include "tandem/engine/model_config.h"

namespace tandem {

StatusOr<ModelMeta> LoadModelMeta(const std::filesystem::path& dir) {
  // The workers' own reader (tandem_model_config), so the router and the workers never disagree
  // on the context, the vocabulary or the EOS ids.
  TANDEM_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  ModelMeta meta;
  // The folder (or file) name, as workers announce it (model_dir.filename()).
  const std::filesystem::path path = std::filesystem::absolute(dir).lexically_normal();
  meta.name = path.filename().string();
  if (meta.name.empty()) meta.name = path.parent_path().filename().string();
  meta.architecture = config.arch_name;
  meta.max_context_tokens = config.max_position_embeddings;
  meta.vocab_size = config.vocab_size;
  meta.eos_token_ids = std::move(config.eos_token_ids);
  return meta;
}

}  // namespace tandem
