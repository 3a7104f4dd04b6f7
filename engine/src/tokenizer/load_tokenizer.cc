#include <filesystem>

#include "tandem/engine/gguf.h"
#include "tandem/engine/tokenizer.h"

namespace tandem {

StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::filesystem::path& dir) {
  if (IsGgufPath(dir)) return LoadGgufTokenizer(dir);
  if (std::filesystem::exists(dir / "tokenizer.json")) {
    return LoadHfTokenizerJson(dir / "tokenizer.json");
  }
  if (std::filesystem::exists(dir / "tokenizer.model")) {
    return LoadSentencePieceModel(dir / "tokenizer.model");
  }
  return NotFoundError("{}: neither tokenizer.json nor tokenizer.model is present", dir.string());
}

}  // namespace tandem
