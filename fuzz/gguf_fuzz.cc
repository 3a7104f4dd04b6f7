// The GGUF reader (engine/src/gguf/gguf.cc) and what is built from a GGUF file's metadata: its
// tokenizer.json / tokenizer_config (engine/src/tokenizer/gguf_tokenizer.cc). Input: a file.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "gguf_tokenizer.h"
#include "tandem/engine/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tandem;
  auto f = GgufFile::FromMemory(std::string_view(reinterpret_cast<const char*>(data), size),
                                "fuzz.gguf");
  if (!f.ok()) return 0;
  const GgufFile& g = **f;
  (void)g.header_bytes();
  for (const auto& [key, value] : g.metadata()) {
    (void)g.GetInt(key);
    (void)g.GetFloat(key);
    (void)g.GetString(key);
    (void)g.GetStringArray(key);
    (void)g.GetIntArray(key);
  }
  for (const auto& t : g.tensors()) (void)t.NumElements();
  (void)tokenizer_internal::GgufTokenizerConfig(g);
  (void)tokenizer_internal::GgufTokenizerJson(g);
  return 0;
}
