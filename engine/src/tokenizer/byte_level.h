// GPT-2 byte-level mapping: every byte is shown as a printable code point, so byte strings can be
// BPE vocabulary entries. Bytes 0x21-0x7E, 0xA1-0xAC, 0xAE-0xFF map to themselves; the other 68
// map to U+0100, U+0101, ... in byte order (so ' ' -> 'Ġ', '\n' -> 'Ċ').
//
// Thread safety: immutable tables built on first use.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tandem::tokenizer_internal {

// The mapped (UTF-8) form of raw `bytes`.
std::string BytesToByteLevel(std::string_view bytes);
// The raw bytes of a mapped token, or nullopt when some code point is not in the mapping
// (Hugging Face then uses the token's own UTF-8 bytes).
std::optional<std::string> ByteLevelToBytes(std::string_view token);

// The GPT-2 pre-tokenization pattern used by ByteLevel(use_regex=true).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace tandem::tokenizer_internal
