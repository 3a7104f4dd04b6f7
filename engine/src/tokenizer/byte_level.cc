#include "byte_level.h"

#include <array>
#include <unordered_map>

#include "unicode.h"

namespace tandem::tokenizer_internal {
namespace {

struct ByteLevelTables {
  std::array<std::string, 256> byte_to_utf8;
  std::unordered_map<char32_t, unsigned char> cp_to_byte;

  ByteLevelTables() {
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      char32_t cp = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++);
      AppendUtf8(cp, &byte_to_utf8[b]);
      cp_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};

const ByteLevelTables& Tables() {
  static const ByteLevelTables tables;
  return tables;
}

}  // namespace

std::string BytesToByteLevel(std::string_view bytes) {
  const ByteLevelTables& t = Tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.byte_to_utf8[b];
  return out;
}

std::optional<std::string> ByteLevelToBytes(std::string_view token) {
  const ByteLevelTables& t = Tables();
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    auto it = t.cp_to_byte.find(NextCodePoint(token, &pos));
    if (it == t.cp_to_byte.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

}  // namespace tandem::tokenizer_internal
