// Hugging Face tokenizer.json and tokenizer_config.json parsing (engine/src/tokenizer), then
// the tokenizer built from them encoding and decoding. Input: tokenizer_config.json, a NUL,
// tokenizer.json, a NUL, text to encode (tools/make_fuzz_corpus.py writes seeds).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "hf_tokenizer.h"
#include "tokenizer_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tandem;
  using namespace tandem::tokenizer_internal;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t a = in.find('\0');
  if (a == std::string_view::npos) return 0;
  const size_t b = in.find('\0', a + 1);
  if (b == std::string_view::npos) return 0;
  auto config = ParseTokenizerConfig(in.substr(0, a), "tokenizer_config.json");
  if (!config.ok()) return 0;
  nlohmann::json j = nlohmann::json::parse(in.substr(a + 1, b - a - 1), nullptr, false);
  if (j.is_discarded()) return 0;
  auto tok = MakeHfTokenizer(j, *config, "tokenizer.json");
  if (!tok.ok()) return 0;
  const std::string_view text = in.substr(b + 1);
  for (bool special : {false, true}) {
    auto ids = (*tok)->Encode(text, special);
    if (!ids.ok()) continue;
    (void)(*tok)->Decode(*ids, /*skip_special=*/special);
  }
  // Arbitrary ids (in range or not) decode without harm.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 2 <= text.size() && raw.size() < 64; i += 2) {
    raw.push_back(static_cast<int16_t>(static_cast<uint8_t>(text[i]) |
                                       static_cast<uint8_t>(text[i + 1]) << 8));
  }
  (void)(*tok)->Decode(raw, false);
  for (int32_t id : raw) {
    (void)(*tok)->TokenBytes(id);
    (void)(*tok)->IsSpecial(id);
  }
  (void)(*tok)->TokenToId(text);
  return 0;
}
